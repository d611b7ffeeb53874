"""The end-to-end flow with the `openai` provider, against the fake OpenAI-compatible
upstream started as a real process: Parley reads it over HTTP as in production."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.fake_upstream import expected_text, running_fake_upstream
from server.auth.passwords import PasswordService
from tests.conftest import BACKENDS, make_settings
from tests.e2e.test_chat_flow import run_flow
from tests.support.live import LiveServer


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    with running_fake_upstream(tokens=25, tps=500) as (_proc, base_url):
        yield base_url


@pytest.fixture(scope="module", params=BACKENDS)
def live(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fast_passwords: PasswordService,
    upstream_url: str,
) -> Iterator[LiveServer]:
    settings = make_settings(
        str(request.param),
        request,
        tmp_path_factory.mktemp("live-openai"),
        llm_provider="openai",
        llm_base_url=upstream_url,
        llm_model="fake-model",
        llm_api_key="sk-test",
        ws_upgrades_per_ip_per_hour=1_000_000,
    )
    server = LiveServer(settings, fast_passwords).start()
    yield server
    server.stop()


async def test_flow_through_openai_compatible_upstream(live: LiveServer) -> None:
    text = await run_flow(live, "Hello over HTTP")
    assert text == expected_text(25)
