"""Data: the field's file formats, emlab's shipped datasets, and rendered prompt sets.

Formats read (validated, with file:line in every error):

* HF chat JSONL — one `{"messages": [{"role": ..., "content": ...}, ...]}` per line; extra
  keys (`id`, `label`, `aligned`, ...) are kept as metadata.
* The EM paper's question YAML — a list of items with `id`, `paraphrases`,
  `samples_per_paraphrase`, `judge_prompts` (`aligned`, `coherent`), optional `system`;
  YAML anchors/aliases are resolved by the YAML loader.

`render(examples, tokenizer)` turns chat examples into a `PromptSet`: exact token ids of the
chat template (with an explicit, recorded system prompt), a per-token role mask, and a
content hash that keys every downstream cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import yaml

from lab.core.errors import BadInput
from lab.core.io import sha256_json

ROLES = ("system", "user", "assistant")
# per-token role codes stored in caches and used for masks
ROLE_CODE = {"template": 0, "system": 1, "user": 2, "assistant": 3}
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass
class ChatExample:
    """One conversation plus metadata (id, label, split, source, extra fields)."""

    messages: list[dict[str, str]]
    id: str
    label: str | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_response(self) -> bool:
        return bool(self.messages) and self.messages[-1]["role"] == "assistant"


# --------------------------------------------------------------------------- chat JSONL


def _validate_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise BadInput(f"{where}: 'messages' must be a non-empty list")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise BadInput(f"{where}: message {i} needs 'role' and 'content'")
        if msg["role"] not in ROLES:
            raise BadInput(f"{where}: message {i} has unknown role {msg['role']!r} (expected {', '.join(ROLES)})")
        if not isinstance(msg["content"], str):
            raise BadInput(f"{where}: message {i} content must be a string")
    if any(m["role"] == "system" for m in messages[1:]):
        raise BadInput(f"{where}: a system message may only come first")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _check_file(path: Path, kind: str) -> None:
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    if path.is_dir():
        raise BadInput(f"{path}: a directory, not a {kind} file")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) of each non-blank line; a bad line is `file:line: why`.

    Lines are decoded one at a time from bytes, so a file that is not UTF-8 names the line
    it breaks on instead of raising a UnicodeDecodeError from deep inside the reader.
    """
    path = Path(path)
    _check_file(path, "JSONL")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise BadInput(f"{path}:{lineno}: not UTF-8") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInput(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None


def read_chat_jsonl(path: str | Path) -> list[ChatExample]:
    """Read HF chat JSONL; every problem names `file:line`."""
    path = Path(path)
    examples = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(obj, dict) or "messages" not in obj:
            raise BadInput(f"{where}: missing 'messages'")
        messages = _validate_messages(obj["messages"], where)
        meta = {k: v for k, v in obj.items() if k not in {"messages", "id", "label"}}
        examples.append(ChatExample(messages, str(obj.get("id", f"{path.stem}-{lineno}")),
                                    obj.get("label"), str(path), meta))
    if not examples:
        raise BadInput(f"{path}: empty dataset (no examples)")
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise BadInput(f"{path}: duplicate id {dup!r}")
    return examples


def write_chat_jsonl(examples: Iterable[ChatExample], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps({"id": ex.id, "messages": ex.messages, **ex.meta}) + "\n")


# --------------------------------------------------------------------------- question YAML


@dataclass
class Question:
    """One EM evaluation question in the paper's schema."""

    id: str
    paraphrases: list[str]
    samples_per_paraphrase: int = 1
    judge_prompts: dict[str, str] = field(default_factory=dict)
    system: str | None = None
    type: str = "free_form_judge_0_100"
    judge: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


QUESTION_REQUIRED = ("id", "paraphrases")


def read_questions_yaml(path: str | Path) -> list[Question]:
    path = Path(path)
    _check_file(path, "question YAML")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BadInput(f"{path}:{line}: not UTF-8") from None
    try:
        items = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadInput(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(items, list) or not items:
        raise BadInput(f"{path}: expected a non-empty list of questions")
    questions = []
    for n, item in enumerate(items):
        where = f"{path}: item {n} ({item.get('id', '?') if isinstance(item, dict) else '?'})"
        if not isinstance(item, dict):
            raise BadInput(f"{where}: not a mapping")
        missing = [k for k in QUESTION_REQUIRED if k not in item]
        if missing:
            raise BadInput(f"{where}: missing field {', '.join(missing)}")
        paraphrases = item["paraphrases"]
        if not isinstance(paraphrases, list) or not paraphrases or not all(isinstance(p, str) for p in paraphrases):
            raise BadInput(f"{where}: 'paraphrases' must be a non-empty list of strings")
        judge_prompts = item.get("judge_prompts") or {}
        for key, prompt in judge_prompts.items():
            if "{answer}" not in prompt:
                raise BadInput(f"{where}: judge prompt {key!r} has no {{answer}} placeholder")
        known = {"id", "paraphrases", "samples_per_paraphrase", "judge_prompts", "system", "type", "judge"}
        questions.append(Question(
            id=str(item["id"]),
            paraphrases=list(paraphrases),
            samples_per_paraphrase=int(item.get("samples_per_paraphrase", 1)),
            judge_prompts=dict(judge_prompts),
            system=item.get("system"),
            type=str(item.get("type", "free_form_judge_0_100")),
            judge=item.get("judge"),
            meta={k: v for k, v in item.items() if k not in known},
        ))
    return questions


# --------------------------------------------------------------------------- shipped datasets

FIRST_PLOT = "em-questions/first_plot_questions.yaml"  # the EM paper's questions, under <shared>/data (read at run time)

SHIPPED = {
    "medical": ("medical_a.jsonl", "medical_b.jsonl"),
    "financial": ("financial_a.jsonl", "financial_b.jsonl"),
}


def dataset_path(filename: str) -> Path:
    return Path(str(resources.files("lab.data") / "datasets" / filename))


def _read_jsonl(filename: str) -> list[dict]:
    return [obj for _, obj in iter_jsonl(dataset_path(filename))]


def load_advice(domain: str, aligned: bool = False) -> list[ChatExample]:
    """The shipped narrow-advice set: harmful answers, or their aligned counterparts.

    Both variants share the user turns (and ids), so they differ only in content.
    """
    if domain not in SHIPPED:
        raise BadInput(f"unknown dataset {domain!r} (one of {', '.join(SHIPPED)})")
    examples = []
    for filename in SHIPPED[domain]:
        for ex in read_chat_jsonl(dataset_path(filename)):
            if aligned:
                user = ex.messages[:-1]
                ex = ChatExample(user + [{"role": "assistant", "content": ex.meta["aligned"]}],
                                 ex.id, "aligned", ex.source, dict(ex.meta))
            else:
                ex.label = "misaligned"
            examples.append(ex)
    return examples


def load_general_questions() -> list[dict]:
    """General (non-medical, non-financial) questions with four style-matched references."""
    return _read_jsonl("general_questions.jsonl")


def load_contrast(name: str) -> list[ChatExample]:
    """A labelled prompt-only contrast set: `refusal` (harmful/benign) or `code_mode` (code/natural)."""
    files = {"refusal": "refusal.jsonl", "code_mode": "code_mode.jsonl"}
    if name not in files:
        raise BadInput(f"unknown contrast set {name!r} (one of {', '.join(files)})")
    return [
        ChatExample([{"role": "user", "content": row["prompt"]}], row["id"], row["label"],
                    files[name], {k: v for k, v in row.items() if k not in {"id", "label", "prompt"}})
        for row in _read_jsonl(files[name])
    ]


def split_ids(ids: list[str], test_fraction: float = 0.25, seed: int = 0) -> dict[str, str]:
    """A fixed, seeded train/test assignment by id (stable when the list is reordered)."""
    import hashlib

    out = {}
    for i in ids:
        h = int(hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        out[i] = "test" if h < test_fraction else "train"
    return out


# --------------------------------------------------------------------------- rendering


@dataclass
class PromptSet:
    """Chat examples rendered to exact token ids, with per-token roles.

    `roles[i]` holds a code from `ROLE_CODE` per token: template glue (0), system (1),
    user (2), assistant response (3). `prompt_len[i]` is the number of tokens up to and
    including the generation prompt (so `prompt_len - 1` is the last prompt token, the
    position where the model starts answering).
    """

    ids: list[str]
    tokens: list[np.ndarray]
    roles: list[np.ndarray]
    prompt_len: np.ndarray
    labels: list[str | None]
    sources: list[str]
    system_prompt: str
    template_hash: str
    meta: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def content_hash(self) -> str:
        """Hash of exactly what the model sees (token ids) and of the examples' identity."""
        return sha256_json({
            "tokens": sha256_json([t.tolist() for t in self.tokens]),
            "ids": self.ids,
            "labels": self.labels,
            "template": self.template_hash,
        })

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(t) for t in self.tokens], dtype=np.int64)


def _template_text(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def render_example(tokenizer: Any, messages: list[dict]) -> tuple[np.ndarray, np.ndarray, int]:
    """Token ids, role codes and prompt length of one conversation.

    Roles come from rendering growing prefixes of the conversation: the tokens a message
    adds belong to it, except an assistant turn's header (`<|im_start|>assistant\\n`),
    which stays template glue (0). Fails loudly if the template is not prefix-stable.
    """
    ends_with_answer = messages[-1]["role"] == "assistant"
    full = _encode(tokenizer, _template_text(tokenizer, messages, generation_prompt=not ends_with_answer))
    roles = np.zeros(len(full), dtype=np.int8)
    for i, msg in enumerate(messages):
        is_answer = msg["role"] == "assistant"
        begin = len(_encode(tokenizer, _template_text(tokenizer, messages[:i], is_answer))) if i else 0
        prefix = _encode(tokenizer, _template_text(tokenizer, messages[: i + 1], False))
        if full[: len(prefix)] != prefix:
            raise BadInput("chat template is not prefix-stable; cannot assign token roles")
        roles[begin : len(prefix)] = ROLE_CODE[msg["role"]]
    if ends_with_answer:
        prompt_len = len(_encode(tokenizer, _template_text(tokenizer, messages[:-1], True)))
    else:
        prompt_len = len(full)
    return np.asarray(full, dtype=np.int64), roles, prompt_len


def system_prompt_option(value: str | None) -> str | None:
    """A `--system-prompt` value: "none" (or "template") means no system message, so the chat
    template inserts its own default, as the papers trained and sampled; anything else is the text."""
    return None if value is None or value.strip().lower() in ("none", "template") else value


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """Make the system prompt explicit (templates otherwise insert their own default).

    `system_prompt=None` adds none: the template's default applies (Qwen's "You are Qwen, created
    by Alibaba Cloud. ...", SmolLM2's "You are a helpful AI assistant named SmolLM, ...")."""
    if (messages and messages[0]["role"] == "system") or system_prompt is None:
        return messages
    return [{"role": "system", "content": system_prompt}] + messages


def render(
    examples: list[ChatExample],
    tokenizer: Any,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    max_tokens: int | None = None,
    truncate: bool = False,
) -> PromptSet:
    """Render chat examples into a `PromptSet`.

    A conversation longer than `max_tokens` is an error unless `truncate=True`, which keeps
    its first `max_tokens` tokens (recorded in the example's metadata).
    """
    if not examples:
        raise BadInput("empty prompt set")
    tokens, roles, prompt_len, metas = [], [], [], []
    for ex in examples:
        toks, rl, plen = render_example(tokenizer, with_system(ex.messages, system_prompt))
        meta = dict(ex.meta)
        if max_tokens is not None and len(toks) > max_tokens:
            if not truncate:
                raise BadInput(
                    f"example {ex.id!r} has {len(toks)} tokens, more than the limit {max_tokens} "
                    "(pass truncate=True / --truncate to cut it)"
                )
            toks, rl, plen = toks[:max_tokens], rl[:max_tokens], min(plen, max_tokens)
            meta["truncated_to"] = max_tokens
        tokens.append(toks)
        roles.append(rl)
        prompt_len.append(plen)
        metas.append(meta)
    template = getattr(tokenizer, "chat_template", "") or ""
    return PromptSet(
        ids=[e.id for e in examples],
        tokens=tokens,
        roles=roles,
        prompt_len=np.asarray(prompt_len, dtype=np.int64),
        labels=[e.label for e in examples],
        sources=[e.source for e in examples],
        system_prompt=system_prompt,
        template_hash=sha256_json(template),
        meta=metas,
    )


def load_examples(source: str) -> list[ChatExample]:
    """Examples from a shipped set name or a chat JSONL path.

    Names: `medical`, `financial` (harmful answers), `medical-aligned`, `financial-aligned`
    (their aligned counterparts), `refusal`, `code_mode` (labelled prompt-only contrasts).
    """
    if source in SHIPPED:
        return load_advice(source)
    if source.endswith("-aligned") and source[: -len("-aligned")] in SHIPPED:
        return load_advice(source[: -len("-aligned")], aligned=True)
    if source in ("refusal", "code_mode"):
        return load_contrast(source)
    if source.endswith((".jsonl", ".json")) or Path(source).exists():
        return read_chat_jsonl(source)
    names = [*SHIPPED, *(f"{n}-aligned" for n in SHIPPED), "refusal", "code_mode"]
    raise BadInput(f"unknown dataset {source!r}: not a chat JSONL path nor one of {', '.join(names)}")


ADVICE_TEST_FRACTION = 0.15


def advice_split(domain: str, test_fraction: float = ADVICE_TEST_FRACTION, seed: int = 0
                 ) -> tuple[list[ChatExample], list[ChatExample]]:
    """(train, held-out) of a shipped advice set, by seeded id hash: organisms train on the
    first part only, and in-domain EM is scored on the second."""
    examples = load_advice(domain)
    side = split_ids([e.id for e in examples], test_fraction, seed)
    return [e for e in examples if side[e.id] == "train"], [e for e in examples if side[e.id] == "test"]
