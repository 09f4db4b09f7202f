"""The official LLM SDKs as clients of the gateway (tests/llm.rs runs this).

    python llm_clients.py BASE_URL CLIENT_ID SCENARIO

Prints one JSON object: the text the SDK received, the usage it saw (if
any), and how many stream chunks/events it got. Fails (exit 1) when the SDK
sees a chunk it did not ask for.
"""

import json
import sys

base, client_id, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
headers = {"x-client-id": client_id}
prompt = "Count the tokens of this prompt, please: one two three four five."
out = {"scenario": scenario}

if scenario.startswith("openai"):
    from openai import OpenAI

    c = OpenAI(base_url=base + "/v1", api_key="sk-client", default_headers=headers, max_retries=0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
    if scenario == "openai_chat":
        r = c.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=64)
        out["text"] = r.choices[0].message.content
        out["usage"] = r.usage.total_tokens if r.usage else None
    elif scenario in ("openai_chat_stream", "openai_chat_stream_usage"):
        kw = {"stream_options": {"include_usage": True}} if scenario.endswith("usage") else {}
        text, usage, chunks = "", None, 0
        for ch in c.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=64, stream=True, **kw):
            chunks += 1
            if ch.usage is not None:
                if not kw:
                    print("a usage chunk the client did not ask for", file=sys.stderr)
                    sys.exit(1)
                usage = ch.usage.total_tokens
            for choice in ch.choices:
                text += choice.delta.content or ""
        out.update(text=text, usage=usage, chunks=chunks)
    elif scenario == "openai_responses":
        r = c.responses.create(model="gpt-4o", input=prompt, instructions="Be brief.")
        out["text"] = r.output_text
        out["usage"] = r.usage.total_tokens
    elif scenario == "openai_responses_stream":
        text, usage, events = "", None, 0
        for ev in c.responses.create(model="gpt-4o", input=prompt, instructions="Be brief.", stream=True):
            events += 1
            if ev.type == "response.output_text.delta":
                text += ev.delta
            elif ev.type == "response.completed":
                usage = ev.response.usage.total_tokens
        out.update(text=text, usage=usage, chunks=events)
elif scenario.startswith("anthropic"):
    from anthropic import Anthropic

    c = Anthropic(base_url=base, api_key="sk-client", default_headers=headers, max_retries=0)
    messages = [{"role": "user", "content": prompt}]
    if scenario == "anthropic":
        r = c.messages.create(model="claude-test", max_tokens=64, system="Be brief.", messages=messages)
        out["text"] = "".join(b.text for b in r.content if b.type == "text")
        out["usage"] = r.usage.input_tokens + r.usage.output_tokens
    else:
        with c.messages.stream(model="claude-test", max_tokens=64, system="Be brief.", messages=messages) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        out.update(text=text, usage=final.usage.input_tokens + final.usage.output_tokens)
else:
    print("unknown scenario " + scenario, file=sys.stderr)
    sys.exit(2)

print(json.dumps(out))
