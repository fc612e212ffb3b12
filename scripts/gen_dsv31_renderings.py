#!/usr/bin/env python3
"""Renders DeepSeek-V3.1's chat template (tests/data/dsv31/tokenizer_config.json) with Jinja2, in the environment
transformers' apply_chat_template uses (trim_blocks, lstrip_blocks, loop controls), over a few conversations:
thinking on / off / unset, tool-call history, tool outputs, an assistant prefix. Writes
tests/data/dsv31/renderings.json ({"cases": [{"name", "messages", "add_generation_prompt", "context", "text"}]}),
which tests/server/dsv31_template_test.cpp checks the engine's Jinja interpreter against.

Usage: python3 scripts/gen_dsv31_renderings.py   (from the repository root; needs jinja2)
"""
import json

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = "tests/data/dsv31/"


def call(name, args):
    return {"type": "function", "id": "call_" + name, "function": {"name": name, "arguments": json.dumps(args)}}


CASES = [
    ("user_thinking_off", [{"role": "user", "content": "Hi"}], True, {"thinking": False}),
    ("user_thinking_on", [{"role": "user", "content": "Hi"}], True, {"thinking": True}),
    ("user_thinking_unset", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], True, {}),
    ("two_systems_history_with_think", [
        {"role": "system", "content": "S1"}, {"role": "system", "content": "S2"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>add</think>4"},
        {"role": "user", "content": "and 3+3? ünïcødé 数学"}], True, {"thinking": True}),
    ("tool_history", [
        {"role": "system", "content": "You can use tools."},
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": None,
         "tool_calls": [call("get_weather", {"city": "Paris"}), call("get_time", {"tz": "CET", "fmt": 24})]},
        {"role": "tool", "content": "22C", "tool_call_id": "call_get_weather"},
        {"role": "tool", "content": "14:00", "tool_call_id": "call_get_time"},
        {"role": "assistant", "content": "It is 22C and 14:00."},
        {"role": "user", "content": "Thanks"}], True, {"thinking": False}),
    ("tool_call_with_content_pending_output", [
        {"role": "user", "content": "Search it"},
        {"role": "assistant", "content": "Searching.", "tool_calls": [call("search", {"q": "moe \"quoted\""})]},
        {"role": "tool", "content": "[1 result]"}], True, {"thinking": True}),
    ("assistant_prefix_thinking", [
        {"role": "user", "content": "Write a haiku"},
        {"role": "assistant", "content": "", "prefix": True}], False, {"thinking": True}),
]


def main():
    cfg = json.load(open(ROOT + "tokenizer_config.json", encoding="utf-8"))
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    tmpl = env.from_string(cfg["chat_template"])
    out = []
    for name, messages, gen, ctx in CASES:
        text = tmpl.render(messages=messages, add_generation_prompt=gen, bos_token=cfg["bos_token"]["content"],
                           eos_token=cfg["eos_token"]["content"], **ctx)
        out.append({"name": name, "messages": messages, "add_generation_prompt": gen, "context": ctx, "text": text})
    with open(ROOT + "renderings.json", "w", encoding="utf-8") as f:
        json.dump({"generator": "scripts/gen_dsv31_renderings.py, Jinja2 " + jinja2.__version__, "cases": out}, f,
                  ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
