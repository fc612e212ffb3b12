#!/usr/bin/env python3
"""Writes tests/data/dsv32_encoder/*.json: DeepSeek-V3.2 conversations and the prompt text DeepSeek's own encoder
(encoding/encoding_dsv32.py from the deepseek-ai/DeepSeek-V3.2 repository, MIT; vLLM ships a copy as
vllm/tokenizers/deepseek_v32_encoding.py) makes of them, called the way vLLM's V3.2 tokenizer calls it: request tools
go into a system message put in front, thinking_mode is "thinking" when chat_template_kwargs.thinking (or
enable_thinking) is set, and drop_thinking is on when the last message is the user's. The engine's native encoder
(src/tokenizer/dsv32_encoding.h) must reproduce every prompt byte for byte (tests/tokenizer/test_dsv32_encoding.cpp).

The reference is not part of this repository: download encoding_dsv32.py to an ignored folder and pass its path.
Usage: python3 scripts/gen_dsv32_encoder_fixture.py .ref/encoding_dsv32.py   (needs the `regex` module)
Each file: {"name", "messages", "tools" (null or OpenAI tools), "thinking", "prompt"}.
It also writes tests/data/dsv32_dsml/parse_cases.json: model outputs in DSML and what the encoder module's
parse_message_from_completion_text makes of them ({"text", "content", "tool_calls"}), for the engine's streaming
DSML parser (src/server/dsml_parser.h; tests/server/dsml_parser_test.cpp).
"""
import importlib.util
import json
import os
import sys

OUT = "tests/data/dsv32_encoder"


def call(name, args, raw=None):
    return {"id": "call_" + name, "type": "function",
            "function": {"name": name, "arguments": raw if raw is not None else json.dumps(args, ensure_ascii=False)}}


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"]}}}
SEARCH = {"type": "function", "function": {
    "name": "search", "description": "Search the web; \"quotes\" and\nnewlines survive.",
    "parameters": {"type": "object", "properties": {
        "query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1},
        "filters": {"type": "object", "properties": {"site": {"type": "string"}}},
        "tags": {"type": "array", "items": {"type": "string"}}, "safe": {"type": "boolean"}},
        "required": ["query"]}, "strict": True}}
NOARGS = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}

SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
    "type": "object", "properties": {"answer": {"type": "number"}, "why": {"type": "string"}},
    "required": ["answer"]}}}

U = lambda c: {"role": "user", "content": c}
S = lambda c: {"role": "system", "content": c}
A = lambda c, r=None: {"role": "assistant", "content": c, **({"reasoning_content": r} if r is not None else {})}
T = lambda c, i: {"role": "tool", "content": c, "tool_call_id": i}

CASES = [
    ("chat_single_user", [U("Hello")], None, False),
    ("thinking_system_user", [S("You are a helpful assistant."), U("What is 2+2?")], None, True),
    ("chat_multi_turn", [S("Be brief."), U("Hi"), A("Hello!"), U("How are you?")], None, False),
    ("thinking_multi_turn_drops_old_reasoning",
     [U("1+1?"), A("2", "one plus one"), U("and 2+2?")], None, True),
    ("thinking_ends_with_assistant_reasoning",
     [U("Name a colour"), A("Blue.", "any colour will do")], None, True),
    ("chat_tools_offered", [U("Weather in Paris?")], [WEATHER, SEARCH], False),
    ("thinking_tool_calls_and_results",
     [S("Use tools when useful."), U("Weather in Paris and news about it?"),
      {"role": "assistant", "content": None, "reasoning_content": "Two lookups.",
       "tool_calls": [call("get_weather", {"city": "Paris", "unit": "c"}),
                      call("search", {"query": "Paris news", "limit": 3, "filters": {"site": "example.org"},
                                      "tags": ["news", "fr"], "safe": True, "extra": None})]},
      T("{\"temp\": 22}", "call_get_weather"), T("3 results", "call_search")],
     [WEATHER, SEARCH], True),
    ("thinking_tool_round_then_new_user",
     [U("Weather in Oslo?"),
      {"role": "assistant", "content": "", "reasoning_content": "Need the tool.",
       "tool_calls": [call("get_weather", {"city": "Oslo"})]},
      T("-3C, snow", "call_get_weather"),
      A("It is -3C and snowing in Oslo.", "Report it."), U("Thanks! And Bergen?")],
     [WEATHER], True),
    ("chat_tool_results", [U("What time is it?"), {"role": "assistant", "content": None,
                                                  "tool_calls": [call("now", {}, raw="{}")]},
                           T("14:05", "call_now")], [NOARGS], False),
    ("chat_assistant_content_and_call",
     [U("Find moe.cpp"), {"role": "assistant", "content": "Let me search.",
                          "tool_calls": [call("search", {"query": "moe.cpp"})]},
      T("found it", "call_search"), A("It is a C++ engine."), U("Great")], [SEARCH], False),
    ("response_format_on_system",
     [{"role": "system", "content": "Answer in JSON.", "response_format": SCHEMA}, U("What is 6*7?")], None, False),
    ("developer_with_tools_and_format_thinking",
     [{"role": "developer", "content": "Check the weather in Rome.", "tools": [WEATHER],
       "response_format": {"type": "json_object"}}], None, True),
    ("unicode_and_escapes",
     [S("Réponds en français 🇫🇷."), U("数学: √2 ≈ ? Tab\there, \"quotes\", back\\slash"),
      {"role": "assistant", "content": None,
       "tool_calls": [call("search", {"query": "√2 ≈ 1.414\n\"exact\"\tvalue — 中文 😀", "tags": ["ü", "\u0001"]})]},
      T("√2 = 1.41421356…", "call_search")], [SEARCH], False),
    ("system_without_content_only_tools", [{"role": "system", "content": None}, U("Hi")], [NOARGS], True),
    ("numbers_in_arguments",
     [U("compute"), {"role": "assistant", "content": None, "reasoning_content": "numbers",
                     "tool_calls": [call("calc", None,
                                         raw='{"a": 0.1, "b": 1e20, "c": -3, "d": 2.50, "e": [1, 2.0, {"f": false}],'
                                             ' "g": 1e-7, "h": 123456789012}')]},
      T("ok", "call_calc")], None, True),
    ("two_system_messages_and_reasoning_key",
     [S("First."), S("Second."), U("Q1"), {"role": "assistant", "content": "A1", "reasoning": "r1"}, U("Q2")],
     [WEATHER], True),
]


D = "｜DSML｜"
EOS = "<｜end▁of▁sentence｜>"


def inv(name, *params):
    body = "".join(f'<{D}parameter name="{k}" string="{t}">{v}</{D}parameter>\n' for k, t, v in params)
    return f'<{D}invoke name="{name}">\n{body}</{D}invoke>\n'


def block(*invokes):
    return f"\n\n<{D}function_calls>\n" + "".join(invokes) + f"</{D}function_calls>"


PARSE_TEXTS = [
    "Hello there." + EOS,
    "Sure, checking." + block(inv("get_weather", ("city", "true", "Paris"), ("days", "false", "3")),
                              inv("search", ("query", "true", 'a "quoted"\nline — ü 😀'),
                                  ("filters", "false", '{"site": "x", "n": [1, 2]}'), ("safe", "false", "true"))) + EOS,
    block(inv("now")) + EOS,
    "Paths:" + block(inv("open", ("path", "true", "C:\\dir\tname\u0001"), ("mode", "true", ""))) + EOS,
    "Line one\n\nLine two" + block(inv("a", ("x", "false", "null")), inv("b", ("y", "false", "-1.5e3"))) + EOS,
]


def write_parse_cases(enc):
    cases = []
    for text in PARSE_TEXTS:
        msg = enc.parse_message_from_completion_text(text, thinking_mode="chat")
        cases.append({"text": text, "content": msg["content"], "tool_calls": msg["tool_calls"]})
    os.makedirs("tests/data/dsv32_dsml", exist_ok=True)
    with open("tests/data/dsv32_dsml/parse_cases.json", "w", encoding="utf-8") as f:
        json.dump({"generator": "scripts/gen_dsv32_encoder_fixture.py", "cases": cases}, f, ensure_ascii=False,
                  indent=1)
        f.write("\n")


def main():
    spec = importlib.util.spec_from_file_location("encoding_dsv32", sys.argv[1])
    enc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(enc)
    os.makedirs(OUT, exist_ok=True)
    for name, messages, tools, thinking in CASES:
        wrapped = list(messages)  # vLLM's DeepseekV32 tokenizer: tools become a leading system message
        if tools:
            wrapped.insert(0, {"role": "system", "tools": tools})
        prompt = enc.encode_messages(wrapped, thinking_mode="thinking" if thinking else "chat",
                                     drop_thinking=wrapped[-1]["role"] == "user")
        with open(f"{OUT}/{name}.json", "w", encoding="utf-8") as f:
            json.dump({"name": name, "messages": messages, "tools": tools, "thinking": thinking, "prompt": prompt}, f,
                      ensure_ascii=False, indent=1)
            f.write("\n")
    print(len(CASES), "cases written to", OUT)
    write_parse_cases(enc)


if __name__ == "__main__":
    main()
