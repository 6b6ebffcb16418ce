"""Per-key spend budgets: the gateway charges each request's cost (configured prices) to its
API key when the request ends, streamed or not; a key over its daily budget gets 429."""

import openai
import pytest

from conftest import start_gateway, stop

KEY, OTHER = "sk-budget-1", "sk-budget-2"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def budgeted(fake_server, tmp_path_factory):
    # "fake/priced" costs $1 per prompt token and $2 per completion token: the fake answers
    # 5 prompt tokens and "one two" (2 tokens), so $9 a request against $10 a day.
    proc, gw = start_gateway(fake_server, tmp_path_factory.mktemp("budget"),
                             {"KEEL_API_KEYS": f"{KEY},{OTHER}", "BUDGET_USD_PER_DAY": "10"})
    yield gw
    stop(proc)


def client(gw, key):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=20)


def test_a_key_over_its_budget_is_refused_until_it_refills(budgeted, fake):
    fake.script("priced", *[{"text": "one two"}] * 4)
    c = client(budgeted, KEY)
    first = c.chat.completions.with_raw_response.create(model="fake/priced", messages=MESSAGES)
    assert first.headers["x-ratelimit-limit-spend"] == "10"
    assert first.headers["x-ratelimit-remaining-spend"] == "10.000000"
    # Streamed: the cost is known only at the end of the stream, and charged then.
    chunks = list(c.chat.completions.create(model="fake/priced", messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens == 5
    with pytest.raises(openai.RateLimitError) as refused:
        c.chat.completions.create(model="fake/priced", messages=MESSAGES)
    response = refused.value.response
    assert response.json()["error"]["code"] == "budget_exceeded"
    # $18 spent of $10 a day: $8.000001 over, refilled at $10 per 86,400 s.
    assert abs(int(response.headers["retry-after"]) - 69_121) <= 2
    assert len(fake.requests("priced")) == 2, "a refused request never reaches the provider"
    # Another key's budget is its own; the key's other routes cost nothing and stay open.
    client(budgeted, OTHER).chat.completions.create(model="fake/priced", messages=MESSAGES)
    assert c.models.list().data is not None
