"""The offline-rebuilt Qwen3-TTS text tokenizer must give the real ids.

Three independent references keep ``utter.dev.vocab`` honest:

* golden ids printed by the real Qwen2/Qwen3 tokenizers in public code (not derived by us);
* tiktoken run directly on ``qwen.tiktoken``'s ranks: tiktoken never sees our ``merges.txt``, so
  any wrong or missing merge shows up as different ids;
* the official ``qwen_tts`` processor, loaded the way ``Qwen3TTSModel.from_pretrained`` loads it.

A negative control proves the comparison would catch a plausible wrong derivation of the merges.
"""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import pytest

from utter.dev import vocab as V

# Texts covering what the official code feeds the tokenizer: plain text in ten languages, digits
# (Qwen2 splits them one by one), punctuation, odd whitespace, and the chat frames it builds.
TEXTS = [
    "Hello, world!",
    "I am solving the equation: x = [-b ± √(b²-4ac)] / 2a? Nobody can — it's a disaster (◍•͈⌔•͈◍), very sad!",
    "Okay. Yeah. I resent you. I love you. I respect you. But you know what? You blew it!",
    "She said \"don't\"; he'd've left... We'RE here, y'all'll SEE.",
    "其实我真的有发现，我是一个特别善于观察别人情绪的人。",
    "哥哥，你回来啦，人家等了你好久好久了，要抱抱！",
    "今天是2024年3月15日，气温23.5°C，湿度67%。",
    "こんにちは、世界。カタカナとひらがな、漢字。",
    "안녕하세요, 세계! 한국어 문장입니다.",
    "Привет, мир! Это тест. Ёжик.",
    "Guten Tag! Größe, Straße, Äpfel und Übermut.",
    "Ça va? Où êtes-vous? L'été à Noël, déjà vu.",
    "¿Dónde está la biblioteca? ¡Olé! Año, niño.",
    "Olá, você está bem? Ação, coração, pão.",
    "Buongiorno! Perché? Così è la vita, caffè già.",
    "12345678901234567890 3.14159 -42 1,000,000 0x1F 1e-9",
    "Call +1 (555) 123-4567 or email me@example.com at 10:30am.",
    "!!!???...,,,;;;:::---___***///\\\\|||@@@###$$$%%%^^^&&&",
    "  leading spaces, double  spaces,\ttabs\t\tand trailing   ",
    "line one\nline two\n\nline four\r\nwindows\r\n\n\n",
    "Mixed 中英文 text with numbers 123 和 emoji 😀🎉👍🏽 and 👨‍👩‍👧.",
    "e\u0301 vs \u00e9 (combining accent vs precomposed), A\u030a vs \u00c5",
    "iPhone HelloWorld McDonald's GPT-4o camelCaseWord XMLHttpRequest",
    'def f(x: int) -> str:\n    return f"{x=}"  # comment\n',
    '<think>not special</think> <tool_call>{"a": 1}</tool_call> <|fim_prefix|>x',
    "<|im_start|>assistant\nHello there.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>assistant\n今天天气不错。<|im_end|>\n",
    "<|im_start|>user\nSpeak warmly and slowly.<|im_end|>\n",
    "<tts_pad><tts_text_bos>text<tts_text_eod><tts_text_bos_single><|audio_pad|><|audio_start|><|audio_end|>",
    "",
    " ",
    "\n",
    "a",
]

# Ids printed by the real tokenizers (Qwen2/2.5/3 and Qwen3-TTS share the BPE and ids < 151669).
GOLDEN = {
    # A Qwen3-TTS prompt, encoded with the real Qwen3-TTS checkpoint's tokenizer (Rust golden test).
    "<|im_start|>assistant\n其实我真的有发现，我是一个特别善于观察别人情绪的人。"
    "<|im_end|>\n<|im_start|>assistant\n": [
        151644, 77091, 198, 101045, 110146, 18830, 99879, 3837, 35946, 101909, 100654, 106614, 104144,
        101106, 104405, 100623, 1773, 151645, 198, 151644, 77091, 198,
    ],
    "<|im_start|>assistant\nHello World<|im_end|>": [151644, 77091, 198, 9707, 4337, 151645],
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    "Hello! I am {{name}}, an AI assistant developed by {{author}}. "
    "How can I assist you today?<|im_end|>\n": [
        151644, 872, 198, 6023, 151645, 198, 151644, 77091, 198, 9707, 0, 358, 1079, 5867, 606, 38154, 458,
        15235, 17847, 7881, 553, 5867, 3094, 3417, 13, 2585, 646, 358, 7789, 498, 3351, 30, 151645, 198,
    ],
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n你是chatgpt吗<|im_end|>\n"
    "<|im_start|>assistant\n": [
        151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 105043, 9686, 70,
        417, 101037, 151645, 198, 151644, 77091, 198,
    ],
}  # fmt: skip

# The first lines of Qwen2's real merges.txt (public copies), in order.
REAL_MERGES_HEAD = [
    "Ġ Ġ", "ĠĠ ĠĠ", "i n", "Ġ t", "ĠĠĠĠ ĠĠĠĠ", "e r", "ĠĠ Ġ", "o n", "Ġ a", "r e", "a t", "s t", "e n",
    "o r", "Ġt h", "Ċ Ċ", "Ġ c", "l e", "Ġ s", "i t", "a n", "a r", "a l", "Ġth e", "; Ċ", "Ġ p", "Ġ f",
    "o u", "Ġ =", "i s", "ĠĠĠĠ ĠĠĠ", "in g", "e s", "Ġ w", "i on", "e d", "i c", "Ġ b", "Ġ d", "e t",
]  # fmt: skip

# The pattern transformers 4.57.3 swaps in when ``fix_mistral_regex=True`` (see the quirk test).
MISTRAL_PAT_STR = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _random_texts(n: int, seed: int = 1234) -> list[str]:
    """Random strings over many scripts, so rarely used merges are exercised too."""
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " \t\n\r  ",
        ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
        "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生",
        "あいうえおかきくけこアイウエオカキクケコ",
        "가나다라마바사아자차카타파하한국어",
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
        "αβγδεζηθικλμνξοπρστυφχψω",
        "éèêëàâäôöûüçñßøåæœ",
        "😀🎉👍🏽❤️✨🔥🚀",
        "ािीुूेैोौंःक्षत्रज्ञ",
        "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    ]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(1, 80)
        chosen = rng.sample(pools, rng.randint(1, 4))
        out.append("".join(rng.choice(rng.choice(chosen)) for _ in range(length)))
    return out


CORPUS = TEXTS + list(GOLDEN) + _random_texts(600)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text_tokenizer")
    V.write_text_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def hf_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _tiktoken(pat_str: str):
    tiktoken = pytest.importorskip("tiktoken")
    specials = {content: i for i, content, _ in V.ADDED_TOKENS}
    return tiktoken.Encoding(
        "qwen-reference", pat_str=pat_str, mergeable_ranks=V.load_ranks(), special_tokens=specials
    )


def _reference_ids(enc, text: str) -> list[int]:
    """What Qwen's own tiktoken tokenizer gives: NFC first, every added token recognised."""
    return enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")


def _mismatches(tokenizer, enc, texts: list[str]) -> list[tuple[str, list[int], list[int]]]:
    bad = []
    for text in texts:
        ours = tokenizer(text)["input_ids"]
        ref = _reference_ids(enc, text)
        if ours != ref:
            bad.append((text, ours, ref))
    return bad


def test_files_match_the_release_layout(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == [
        "merges.txt",
        "preprocessor_config.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    # Byte-exact sizes of Qwen2's published vocab.json and merges.txt.
    assert (folder / "vocab.json").stat().st_size == 2_776_833
    assert (folder / "merges.txt").stat().st_size == 1_671_853
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    assert len(lines) - 1 == V.NUM_BPE_TOKENS - 256
    assert lines[1 : 1 + len(REAL_MERGES_HEAD)] == REAL_MERGES_HEAD
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    assert {int(k): v["content"] for k, v in config["added_tokens_decoder"].items()} == {
        i: c for i, c, _ in V.ADDED_TOKENS
    }


def test_real_special_ids(hf_tokenizer) -> None:
    assert hf_tokenizer.convert_tokens_to_ids("assistant") == 77091
    assert hf_tokenizer("assistant")["input_ids"] == [77091]
    for token, expected in V.SPECIAL_IDS.items():
        assert hf_tokenizer(token)["input_ids"] == [expected], token
        assert hf_tokenizer.convert_tokens_to_ids(token) == expected, token
    assert hf_tokenizer.eos_token == "<|im_end|>" and hf_tokenizer.pad_token_id == 151643
    assert len(hf_tokenizer) == 151676


@pytest.mark.parametrize("text", list(GOLDEN))
def test_golden_ids_of_the_real_tokenizer(hf_tokenizer, text: str) -> None:
    assert hf_tokenizer(text)["input_ids"] == GOLDEN[text]


def test_every_vocab_entry_is_rebuilt_by_its_merges(folder: Path) -> None:
    """tiktoken returns a whole-vocab piece as one token; Hugging Face BPE must reach it via merges."""
    from tokenizers.models import BPE

    bpe = BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    bad = [(s, i) for s, i in vocab.items() if [t.id for t in bpe.tokenize(s)] != [i]]
    assert not bad, f"{len(bad)} tokens not reachable, e.g. {bad[:5]}"


def test_matches_tiktoken_on_the_corpus(hf_tokenizer) -> None:
    bad = _mismatches(hf_tokenizer, _tiktoken(V.QWEN2_PAT_STR), CORPUS)
    assert not bad, f"{len(bad)} of {len(CORPUS)} texts differ, e.g. {bad[:3]}"


def test_decodes_back_to_the_nfc_text(hf_tokenizer) -> None:
    for text in TEXTS:
        ids = hf_tokenizer(text)["input_ids"]
        assert hf_tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


def test_a_wrong_merge_derivation_is_caught(tmp_path: Path) -> None:
    """Negative control: take, for every token, the first split into two older tokens instead of
    the split BPE really ends with. Same vocab, same number of merges, and the comparisons above
    must fail; otherwise they would not be testing the merges at all."""
    from transformers import AutoTokenizer

    ranks = V.load_ranks()
    table = V.bytes_to_unicode()

    def enc(b: bytes) -> str:
        return "".join(table[x] for x in b)

    wrong = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            older = [
                i
                for i in range(1, len(token))
                if max(ranks.get(token[:i], rank), ranks.get(token[i:], rank)) < rank
            ]
            wrong.append(f"{enc(token[: older[0]])} {enc(token[older[0] :])}")
    V.write_text_tokenizer(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(wrong) + "\n", encoding="utf-8")
    assert wrong[:40] != REAL_MERGES_HEAD

    broken = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    bad = _mismatches(broken, _tiktoken(V.QWEN2_PAT_STR), CORPUS)
    assert len(bad) > 10, "the corpus comparison did not notice wrong merges"


def test_official_processor_loads_and_agrees(folder: Path, hf_tokenizer) -> None:
    """The official processor on our files, without the Mistral flag, gives exactly our ids."""
    from tests.official import import_qwen_tts

    import_qwen_tts()
    from qwen_tts.core.models import Qwen3TTSProcessor

    processor = Qwen3TTSProcessor.from_pretrained(str(folder))
    assert type(processor.tokenizer).__name__ == "Qwen2TokenizerFast"
    for text in TEXTS:
        assert processor(text=text)["input_ids"] == [hf_tokenizer(text)["input_ids"]], text
    # Batches pad on the left with <|endoftext|>, as the official generate code expects.
    batch = processor(text=["a b c", "a"], padding=True)
    assert batch["input_ids"][1][:2] == [151643, 151643]


def test_official_model_loading_path_uses_the_mistral_regex(folder: Path, tmp_path: Path) -> None:
    """Documents an upstream quirk that the engine deliberately does not copy (see engine/text.py).

    ``Qwen3TTSModel.from_pretrained`` loads the processor with ``fix_mistral_regex=True``. With
    transformers 4.57.3 and a *local* folder whose config.json says ``transformers_version``
    4.57.3 (as the releases do), transformers then replaces the Qwen2 pre-tokenizer regex with
    the Mistral one: `` iPhone`` becomes `` i`` + ``Phone``. This holds for any checkpoint folder,
    ours or the real one; the merges are the same, only the split before BPE changes.
    """
    from tests.official import import_qwen_tts

    import_qwen_tts()
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSProcessor
    from transformers import AutoConfig, AutoProcessor

    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "qwen3_tts", "transformers_version": "4.57.3"}), encoding="utf-8"
    )
    AutoConfig.register("qwen3_tts", Qwen3TTSConfig, exist_ok=True)
    AutoProcessor.register(Qwen3TTSConfig, Qwen3TTSProcessor, exist_ok=True)
    processor = AutoProcessor.from_pretrained(str(tmp_path), fix_mistral_regex=True)
    assert isinstance(processor, Qwen3TTSProcessor)

    mistral = _tiktoken(MISTRAL_PAT_STR)
    bad = _mismatches(processor.tokenizer, mistral, CORPUS)
    assert not bad, f"{len(bad)} texts differ from tiktoken with the Mistral regex, e.g. {bad[:3]}"
    assert processor(text=" iPhone")["input_ids"] == [[600, 6939]]
    assert _reference_ids(_tiktoken(V.QWEN2_PAT_STR), " iPhone") == [12167]


def test_merges_are_derived_quickly() -> None:
    import time

    V.build_vocab_and_merges.cache_clear()
    start = time.perf_counter()
    vocab, merges = V.build_vocab_and_merges()
    assert time.perf_counter() - start < 10.0
    assert len(vocab) == V.NUM_BPE_TOKENS and len(merges) == V.NUM_BPE_TOKENS - 256
    assert V.build_vocab_and_merges() is V.build_vocab_and_merges()


def test_engine_tokenizer_keeps_the_qwen2_split(tmp_path: Path, folder: Path) -> None:
    """The engine loads a release-like folder (config says 4.57.3) with the Qwen2 regex, no warning."""
    import json as _json

    from utter.engine.text import TextTokenizer

    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "config.json").write_text(
        _json.dumps({"model_type": "qwen3_tts", "transformers_version": "4.57.3"}), encoding="utf-8"
    )
    tok = TextTokenizer(tmp_path)
    ids = tok.target_ids(" iPhone")
    assert ids[3:-5] == [12167]
    assert ids[:3] == [151644, 77091, 198] and ids[-5:] == [151645, 198, 151644, 77091, 198]


def test_engine_tokenizer_is_the_one_transformers_converts(folder: Path) -> None:
    """The engine builds the fast tokenizer from the files itself (transformers' import and
    conversion were seconds of every cold start): it is transformers' conversion to the last
    field (normalizer, split regex, byte-level, BPE, added tokens, post-processor), gives its ids
    on the corpus and on texts with special tokens inside, and never imports transformers."""
    import json as _json
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from utter.engine.text import TextTokenizer

    ours = TextTokenizer(folder)
    theirs = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, fix_mistral_regex=False)
    assert _json.loads(ours._backend.to_str()) == _json.loads(theirs.backend_tokenizer.to_str())
    texts = CORPUS + ["<|im_start|>user\nHi<|im_end|>", "a<tts_pad>b <tool_call>x</tool_call>", "  \n\n\t x"]
    bad = [t for t in texts if ours._ids(t) != theirs(t)["input_ids"]]
    assert not bad, f"{len(bad)} texts tokenised differently, e.g. {bad[:3]!r}"
    probe = f"from utter.engine.text import TextTokenizer; import sys; TextTokenizer({str(folder)!r}); "
    probe += "sys.exit('transformers was imported' if 'transformers' in sys.modules else 0)"
    subprocess.run([sys.executable, "-c", probe], check=True)


def test_engine_tokenizer_falls_back_to_transformers(tmp_path: Path, folder: Path, caplog) -> None:
    """A folder the direct build does not cover (one with a tokenizer.json, added tokens whose
    ids leave a gap) loads through transformers and gives transformers' ids."""
    import json as _json
    import logging

    from transformers import AutoTokenizer

    from utter.engine.text import TextTokenizer

    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    config = _json.loads((tmp_path / "tokenizer_config.json").read_text())
    last = max(config["added_tokens_decoder"], key=int)
    content = config["added_tokens_decoder"][last]["content"]
    config["added_tokens_decoder"][str(int(last) + 5)] = config["added_tokens_decoder"].pop(last)
    (tmp_path / "tokenizer_config.json").write_text(_json.dumps(config))
    theirs = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True, fix_mistral_regex=False)
    with caplog.at_level(logging.INFO, logger="utter.engine.text"):
        gapped = TextTokenizer(tmp_path)
    assert "through transformers" in caplog.text
    for text in (content, f"a{content}b", " iPhone"):
        assert gapped._ids(text) == theirs(text)["input_ids"]

    caplog.clear()
    (tmp_path / "tokenizer_config.json").write_bytes((folder / "tokenizer_config.json").read_bytes())
    (tmp_path / "tokenizer.json").write_text(theirs.backend_tokenizer.to_str())
    with caplog.at_level(logging.INFO, logger="utter.engine.text"):
        with_json = TextTokenizer(tmp_path)
    assert "through transformers" in caplog.text
    assert with_json._ids(" iPhone") == [12167]
