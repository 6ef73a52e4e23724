"""Prompt templates: how a question becomes the text the policy continues.

- "r1_zero": DeepSeek-R1 paper Table 1 (base models; reasoning in <think>, answer in <answer>).
- "r1": the readable output format of the R1 cold-start data (§2.3.1):
  |special_token| <reasoning_process> |special_token| <summary>. The prompt is the Table 1
  conversation with the format sentence describing this layout; the summary ends with the final
  answer in \\boxed{}, which is where the reward reads it. The reward server splits a completion
  with `r1jax.reward.mathcheck.split_completion` (format, language and answer all use that split);
  `format_r1_response` writes exactly the layout it scores 1.0 for non-empty parts.
- "chatml": the chat format of SmolLM2 / Qwen checkpoints. It asks for no answer format, so its reward
  format "chat" scores any non-empty completion 1 (append an instruction with data.question_suffix).
- "chatml_boxed": "chatml" with the R1 paper's instruction "Please reason step by step, and put your final
  answer within \\boxed{}." after the question; graded by the reward format "chat_boxed", whose format
  reward checks that instruction (one boxed final answer after any </think>).
- "deepseek_r1": the chat template of the released DeepSeek-R1 checkpoints (<｜User｜>/<｜Assistant｜>);
  the assistant turn opens with "<think>\n" as the released template does.

`render_prompt(template, question)` gives the prompt text; `render_example(template, question,
response)` gives (prompt, response) for SFT, where the loss covers the response only. Neither adds
BOS/EOS tokens: the pipelines add those as token ids.
"""

from __future__ import annotations

# Paper Table 1, verbatim; "prompt" there is the question.
R1_ZERO = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>. User: {question}. Assistant:"
)

SPECIAL_TOKEN = "|special_token|"

R1_READABLE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process and then summarises the result for the user. "
    f"The reasoning process and summary are separated by {SPECIAL_TOKEN} markers, i.e., {SPECIAL_TOKEN} "
    f"reasoning process here {SPECIAL_TOKEN} summary here. The summary ends with the final answer in "
    "\\boxed{}. User: {question}. Assistant:"
)

CHATML = "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"

# The R1 paper's instruction for math prompts to chat models (§3, evaluation setup).
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CHATML_BOXED = CHATML.replace("{question}", "{question} " + BOXED_INSTRUCTION)
# chatml_boxed with one worked exchange before the question (one-shot): a small chat model imitates a
# demonstrated answer layout far more readily than it follows the instruction alone. The demonstration's
# problem (a two-digit sum) is outside the one-digit arithmetic it is meant for.
CHATML_BOXED_1SHOT = (
    CHATML.replace("{question}", "Calculate 12 + 5. " + BOXED_INSTRUCTION)
    + "12 + 5 = 17.\n\nThe final answer is \\boxed{17}.<|im_end|>\n" + CHATML_BOXED
)

DEEPSEEK_R1 = "<｜begin▁of▁sentence｜><｜User｜>{question}<｜Assistant｜><think>\n"

TEMPLATES = {"r1_zero": R1_ZERO, "r1": R1_READABLE, "chatml": CHATML, "chatml_boxed": CHATML_BOXED,
             "chatml_boxed_1shot": CHATML_BOXED_1SHOT, "deepseek_r1": DEEPSEEK_R1}

# The reward server's "template" field: which output format the completion is graded against.
REWARD_FORMAT = {"r1_zero": "r1_zero", "r1": "r1", "chatml": "chat", "chatml_boxed": "chat_boxed",
                 "chatml_boxed_1shot": "chat_boxed", "deepseek_r1": "chat"}


def render_prompt(template: str, question: str) -> str:
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose one of {sorted(TEMPLATES)}")
    if template in ("r1_zero", "r1"):
        # Table 1 writes "User: prompt. Assistant:"; a question that ends with its own period keeps one
        question = question[:-1] if question.endswith(".") else question
    # str.replace, not str.format: questions contain braces (sets, LaTeX, code).
    return TEMPLATES[template].replace("{question}", question)


def render_example(template: str, question: str, response: str) -> tuple[str, str]:
    """(prompt, response) for SFT. R1-Zero's "Assistant:" is followed by a space before the answer."""
    prompt = render_prompt(template, question)
    if template in ("r1_zero", "r1") and not response.startswith((" ", "\n")):
        response = " " + response
    return prompt, response


def format_r1_zero_response(reasoning: str, answer: str) -> str:
    return f"<think> {reasoning} </think> <answer> {answer} </answer>"


def format_r1_response(reasoning: str, summary: str) -> str:
    """`|special_token| reasoning |special_token| summary`. A marker inside either part would move the
    split the reward makes, so it is refused."""
    for name, text in (("reasoning", reasoning), ("summary", summary)):
        if SPECIAL_TOKEN in text:
            raise ValueError(f"format_r1_response: {name} contains the marker {SPECIAL_TOKEN!r}")
    return f"{SPECIAL_TOKEN} {reasoning} {SPECIAL_TOKEN} {summary}"
