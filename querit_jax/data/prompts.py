"""Task prompts for synthetic-query generation, and parsing of what the generator answers.

Prompts are data: a name, the target language, the number of queries to ask for, and a text with a
`{content}` slot for the document. The presets are modelled on the Querit-Reranker paper's appendix
(French school-student questions for Alloprof-style reranking, Russian factoid questions that name
the entity by an alternate surface form for RuBQ, Japanese MS MARCO-style search queries) plus a
generic web-search prompt. Generators must wrap each query between `<|begin_of_query|>` and
`<|end_of_query|>`; anything else is counted as malformed, never fatal.
"""

import dataclasses
import re

BEGIN, END = "<|begin_of_query|>", "<|end_of_query|>"
_QUERY = re.compile(re.escape(BEGIN) + r"(.*?)" + re.escape(END), re.DOTALL)

_OUTPUT_RULES = (
    "Output requirements:\n- Output exactly {n} queries.\n"
    f"- Wrap each query between the special tokens {BEGIN} and {END}.\n"
    "- Do not output anything outside these tokens."
)


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    name: str
    language: str
    text: str  # contains {content} (the document) and may contain {n} (queries asked for)
    num_queries: int = 5

    def render(self, content: str) -> str:
        return self.text.replace("{n}", str(self.num_queries)).replace("{content}", content)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS = {
    "web_search": PromptTemplate(
        "web_search",
        "any",
        "You write search queries that real users would type to find the document below.\n"
        "Each query must:\n1. Ask for one specific piece of information the document contains.\n"
        "2. Be short and natural, in the language of the document.\n"
        "3. Not copy a sentence of the document.\n" + _OUTPUT_RULES + "\nDocument: {content}",
    ),
    "fr_k12": PromptTemplate(
        "fr_k12",
        "fr",
        "Tu es un élève de primaire ou de secondaire qui cherche de l'aide pour ses devoirs.\n"
        "Écris des questions qui :\n1. Sont naturelles et qu'un élève pourrait vraiment poser.\n"
        "2. Portent sur l'information principale du document, sans recopier ni reformuler son "
        "texte.\n"
        "3. Utilisent un français familier de tous les jours, pas un style académique.\n"
        "4. Font entre 10 et 100 mots.\n" + _OUTPUT_RULES + "\nDocument : {content}",
    ),
    "ru_factoid": PromptTemplate(
        "ru_factoid",
        "ru",
        "Составь фактоидный вопрос по документу.\n"
        "1. Найди главную именованную сущность документа.\n"
        "2. Если у неё есть другая форма написания (латиница или кириллица, транслитерация, "
        "разговорная "
        "форма), используй в вопросе форму, отличную от той, что в документе.\n"
        "3. Если другой формы нет, используй каноническую русскую.\n"
        "Ограничения: только русский язык; в каждом вопросе одна сущность и один факт; 5–20 слов; "
        "предпочтительно «Когда…», «Кто…», «В каком году…», «Где…»; не копируй предложения "
        "документа.\n" + _OUTPUT_RULES + "\nДокумент: {content}",
        num_queries=1,
    ),
    "ja_msmarco": PromptTemplate(
        "ja_msmarco",
        "ja",
        "以下の文書を見つけるために日本のユーザーが検索エンジンに入力しそうな検索クエリを書いてください。\n"
        "各クエリは:\n1. 文書に含まれる具体的な情報を一つだけ尋ねる。\n"
        "2. 短く簡潔で自然な日本語にする。\n"
        "3. 文書の主要な実体や概念に沿う（語の重なりは構わない）。\n"
        "4. 文書に重要な数値（電話番号、価格、日付など）があれば、"
        "少なくとも一つのクエリでその数値を尋ねる。\n" + _OUTPUT_RULES + "\n文書: {content}",
    ),
}


def make_prompt(
    name: str, num_queries: int | None = None, text: str | None = None
) -> PromptTemplate:
    """A preset (optionally with another query count), or a custom text under `name`."""
    if text:
        if "{content}" not in text:
            raise ValueError(f"Prompt {name!r} has no {{content}} slot for the document.")
        return PromptTemplate(name, "any", text, num_queries or 5)
    if name not in PRESETS:
        raise ValueError(
            f"Unknown prompt {name!r}; choose one of {sorted(PRESETS)} or give a text."
        )
    prompt = PRESETS[name]
    return dataclasses.replace(prompt, num_queries=num_queries) if num_queries else prompt


def parse_queries(generation: str) -> list[str]:
    """The queries between the markers (whitespace-normalised, empty ones dropped); [] if none."""
    return [" ".join(q.split()) for q in _QUERY.findall(generation) if q.strip()]
