"""The fixed inputs of every benchmark run: texts, a reference recording, frame budgets.

Both systems get exactly these inputs, so their numbers compare. The three texts have the lengths
the seed benchmarked (56, 800 and 2616 characters); the reference is a synthetic, voiced-sounding
signal, because no recording ships with the repository and random weights make noise anyway.
"""

from __future__ import annotations

import math

import numpy as np

SAMPLE_RATE = 24_000
FRAME_SECONDS = 0.08  # one 12.5 Hz frame = 1920 samples at 24 kHz
LANGUAGE = "English"

# Speaking rate used to turn a text length into a frame budget. The seed's 2594-character text
# came out as about 2.8 minutes of audio (15.4 characters per second); 15 is that, rounded.
CHARS_PER_SECOND = 15.0

# Reference voice (ICL mode, like the seed's service): 6 s of audio and a one-sentence transcript,
# the first sentence of the seed's reference transcript.
REF_SECONDS = 6.0
REF_TEXT = (
    "Prosecutors have opened a massive investigation into allegations of fixing games and illegal betting."
)

SHORT = "Hello there! This is Utter reading a short sentence out."  # 56 characters
MEDIUM = (
    "Every spring the old harbour town wakes up slowly. The fishing boats are painted in bright "
    "colours, the cafes put their chairs back on the pavement, and the first ferries arrive with "
    "visitors who have never seen the lighthouse before. Children run along the sea wall, counting "
    "the gulls, while their parents read the menus twice and still order the soup of the day. By noon"
    " the market square is full of voices: traders call out the price of cherries, a violinist plays "
    "the same three songs, and somebody always asks for directions to the museum, closed for repairs "
    "since October. In the evening the wind turns, the air smells of salt and wood smoke, and the "
    "lights come on one by one along the quay. It is not a famous place, and it doesn't try to be "
    "one, but people who visit once tend to come back."
)
LONG = (
    "Before a language model can read a single word, the text has to be cut into pieces it knows. "
    "This step is called tokenization, and it matters more than most people expect. A tokenizer turns"
    " a string of characters into a list of integers, and every integer stands for a piece of text "
    "from a fixed vocabulary. Early systems used whole words as pieces. That was simple, but any word"
    " missing from the vocabulary became an unknown token, and names, typos and new words were lost. "
    "Character-level models solved that problem but made sequences very long, which is slow and makes"
    " it harder for the model to connect distant ideas. Modern tokenizers sit in between. Byte pair "
    "encoding starts from single bytes and repeatedly merges the most frequent pair of neighbouring "
    "pieces into a new piece, until the vocabulary reaches the size its designers chose, often "
    "somewhere between thirty thousand and a few hundred thousand entries. Common words end up as one"
    " token, rare words are split into a few familiar parts, and nothing is ever unknown, because "
    "every possible byte is still in the vocabulary. The choice of vocabulary has real consequences. "
    "A tokenizer trained mostly on English text will split other languages into many more pieces, so "
    "the same sentence costs more tokens, more memory and more time in those languages. Whitespace, "
    "punctuation and capital letters all need rules, and small differences in those rules can change "
    "how a word is split. Speech models add another layer. A text to speech system reads tokens on "
    "the text side, but it also has to produce audio, and audio is turned into tokens of its own by a"
    " neural codec. The codec compresses a short slice of sound, for example eighty milliseconds, "
    "into a handful of integers taken from several codebooks. The first codebook carries the coarse "
    "shape of the sound and the later ones add fine detail. The speech model predicts these codes "
    "frame by frame, and the codec decoder turns them back into a waveform that you can play. The "
    "faster the model can predict a frame, the sooner the listener hears the voice. When you "
    "benchmark such a system, it helps to separate the parts. Measure how long the main model takes "
    "for each frame, how long the smaller model that fills in the remaining codebooks takes, and how "
    "long the codec needs to turn codes into sound. Measure the time until the first audio arrives, "
    "because that is what a person waiting for a reply notices. Measure how many seconds of audio the"
    " machine can produce per second when many people ask at once, because that is what decides the "
    "cost of running a service. A good benchmark is boring by design."
)
TEXTS = {"short": SHORT, "medium": MEDIUM, "long": LONG}


def text_frames(text: str) -> int:
    """Frames a text takes at ``CHARS_PER_SECOND``: 47, 667 and 2180 for the three texts."""
    return max(1, math.ceil(len(text) / CHARS_PER_SECOND / FRAME_SECONDS))


def reference_audio(seconds: float = REF_SECONDS, sr: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A deterministic voiced-sounding signal: harmonics of a wobbling pitch, modulated, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    sig = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2)
    sig = 0.3 * sig + 0.01 * rng.standard_normal(len(t))
    return sig.astype(np.float32)
