"""What a designed voice says in its clip: the "design, then clone" workflow.

A VoiceDesign model makes a voice from a description, but each generation may come out a
little different. Its documented workflow is to speak one short clip in the described voice,
then give that clip and its words to a Base model as a reference (ICL), so the voice stays the
same for any number of texts. These are the clip's words, one natural sentence per language.
"""

from __future__ import annotations

SAMPLE_TEXTS = {
    "Chinese": "今天的天气很好，我们一起去公园散步吧。",
    "Japanese": "今日はとても良い天気ですね。一緒に散歩に行きましょう。",
    "Korean": "오늘 날씨가 정말 좋네요. 같이 산책하러 가요.",
    "German": "Heute ist ein schöner Tag, lass uns zusammen im Park spazieren gehen.",
    "French": "Il fait très beau aujourd'hui, allons nous promener ensemble dans le parc.",
    "Russian": "Сегодня прекрасная погода, давай погуляем вместе в парке.",
    "Portuguese": "Hoje está um dia lindo, vamos passear juntos no parque.",
    "Spanish": "Hoy hace un día precioso, vamos a pasear juntos por el parque.",
    "Italian": "Oggi è una bellissima giornata, andiamo a fare una passeggiata nel parco.",
}
DEFAULT_SAMPLE_TEXT = "Today is a lovely day. Let's take a walk in the park together and talk for a while."


def sample_text(language: str | None) -> str:
    """The clip's words in ``language`` (English for Auto or an unknown one)."""
    return SAMPLE_TEXTS.get((language or "").strip().capitalize(), DEFAULT_SAMPLE_TEXT)
