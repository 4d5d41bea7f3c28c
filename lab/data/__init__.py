"""Data: the field's file formats, emlab's shipped datasets, and prompt sets rendered to tokens.

Everything a model reads starts here, and nothing here loads a model.

Main nouns:

- `ChatExample`: one conversation (HF chat `messages`) with an id, a label and metadata; read
  from chat JSONL (`read_chat_jsonl`), the format every fine-tuning set of the field uses.
- `Question`: an item of the EM paper's question YAML (`read_questions_yaml`): paraphrases,
  samples per paraphrase, the judge prompts.
- the shipped datasets (files in `lab/data/datasets/`, written for emlab): advice sets
  (`load_advice("medical")`, `advice_split` for train vs held-out), labelled contrasts
  (`load_contrast("refusal")`), general questions with matched reference answers; any of them,
  or a JSONL path, by name with `load_examples`.
- `PromptSet`: examples rendered with a tokenizer's chat template (`render`): exact token ids,
  a per-token role code (`ROLE_CODE`), and a content hash that keys every cache built from it.
  The system prompt is explicit and recorded (`DEFAULT_SYSTEM_PROMPT` unless given).

Getting started::

    from lab.data import load_examples, render

    examples = load_examples("medical")              # or "refusal", or "path/to/chat.jsonl"
    prompts = render(examples, model.tokenizer)      # PromptSet: tokens, roles, key

Modules: `formats` (all of the above); `datasets/` is package data (JSONL only).
"""

from lab.core.lazy import face_names, lazy_face

FACE = {
    "formats": """ChatExample Question PromptSet ROLES ROLE_CODE DEFAULT_SYSTEM_PROMPT QUESTION_REQUIRED
        iter_jsonl read_chat_jsonl write_chat_jsonl read_questions_yaml
        FIRST_PLOT SHIPPED ADVICE_TEST_FRACTION dataset_path load_advice load_general_questions load_contrast load_examples
        advice_split split_ids render render_example with_system system_prompt_option""",
}
__all__ = face_names(FACE)
__getattr__, __dir__ = lazy_face(__name__, FACE)
