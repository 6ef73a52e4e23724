"""Scores one validated item: every weighted component, then the weighted sum (runs in a worker)."""

from __future__ import annotations

import traceback

from r1jax.reward import codecheck, registry, sandbox
from r1jax.reward.mathcheck import verify_math
from r1jax.reward.textrewards import countdown_reward, exact_answer_reward, format_reward, language_reward
from r1jax.reward.types import INFRA_ERROR, OK, REJECTED, ItemError, Verdict, validate_item

DEFAULT_LANGUAGE = "en"


def _accuracy(item: dict, limits: sandbox.Limits) -> Verdict:
    task = item["task"]
    if task == "math":
        return verify_math(item["completion"], item["answer"], item["template"])
    if task == "exact":
        return exact_answer_reward(item["completion"], item["answer"], item["template"])
    if task == "countdown":
        return countdown_reward(item["completion"], item["meta"], item["template"])
    if task == "code":
        return codecheck.verify_code(item["completion"], item["meta"], item["template"], limits)
    raise ItemError(f"task {task!r} has no accuracy verifier; give it weight 0 or use another task")


def component(name: str, item: dict, limits: sandbox.Limits) -> Verdict:
    if name == "accuracy":
        return _accuracy(item, limits)
    if name == "format":
        return format_reward(item["completion"], item["template"])
    if name == "language":
        return language_reward(item["completion"], item["meta"].get("language", DEFAULT_LANGUAGE), item["template"])
    return registry.call(name, item)


def check_item(raw, index: int) -> dict:
    """Full validation done by the server before queueing, so a malformed item fails the request (400)
    with a message naming the row and field instead of becoming a silent zero."""
    item = validate_item(raw, index)
    try:
        for name in item["weights"]:
            if not registry.known(name):
                raise ItemError(f"weights: unknown reward {name!r}; known: {registry.names()}")
        if item["weights"].get("accuracy", 0):
            if item["task"] == "code":
                codecheck.parse_tests(item["meta"])
            elif item["task"] == "countdown":
                countdown_reward("", item["meta"], item["template"])
            elif item["task"] == "none":
                raise ItemError("task 'none' has no accuracy verifier; set weights.accuracy to 0")
        if item["weights"].get("language", 0):
            language_reward("", item["meta"].get("language", DEFAULT_LANGUAGE), item["template"])
    except ItemError as e:
        raise ItemError(f"item {index}: {e}") from None
    return item


def score_item(item: dict, limits: sandbox.Limits) -> dict:
    """-> {"reward", "status", "components": {name: score}, "details": {name: note}}. Never raises."""
    components, details, statuses = {}, {}, {}
    for name in item["weights"]:
        try:
            v = component(name, item, limits)
        except ItemError as e:
            v = Verdict(0.0, REJECTED, str(e))
        except sandbox.SandboxUnavailable as e:
            v = Verdict(0.0, INFRA_ERROR, f"sandbox unavailable: {e}")
        except Exception as e:  # noqa: BLE001 - a grader bug must not look like a wrong answer
            v = Verdict(0.0, INFRA_ERROR, f"{name}: {type(e).__name__}: {e}; {traceback.format_exc()[-300:]}")
        components[name], details[name], statuses[name] = v.score, v.detail, v.status
    reward = sum(item["weights"][n] * components[n] for n in components)
    infra = [s for s in statuses.values() if s in (INFRA_ERROR, REJECTED)]
    if infra:
        status = infra[0]
    elif "accuracy" in statuses:
        status = statuses["accuracy"]
    else:
        status = next((s for s in statuses.values() if s != OK), OK)
    return {"reward": float(reward), "status": status, "components": components, "details": details}
