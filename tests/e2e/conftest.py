from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.auth.passwords import PasswordService
from server.ws.connection import WsConfig
from tests.conftest import BACKENDS, make_settings
from tests.support.live import LiveServer


@pytest.fixture(scope="module", params=BACKENDS)
def live(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fast_passwords: PasswordService,
) -> Iterator[LiveServer]:
    overrides = getattr(request.module, "LIVE_SETTINGS", {})
    ws_config = getattr(request.module, "LIVE_WS_CONFIG", WsConfig())
    settings = make_settings(
        str(request.param),
        request,
        tmp_path_factory.mktemp("live"),
        **{
            "sim_tokens_per_second": 400.0,
            "sim_max_tokens": 40,
            # every test socket comes from 127.0.0.1, and Redis outlives runs
            "ws_upgrades_per_ip_per_hour": 1_000_000,
            **overrides,
        },
    )
    server = LiveServer(settings, fast_passwords, ws_config=ws_config).start()
    yield server
    server.stop()
