import pytest

from harness import Gateway, Mock, require_built


@pytest.fixture(scope="session", autouse=True)
def built():
    try:
        require_built()
    except RuntimeError as e:
        pytest.exit(str(e), returncode=2)


@pytest.fixture
def mock():
    m = Mock()
    yield m
    m.stop()


@pytest.fixture
def gateway_factory(mock):
    """Starts Envoy gateways in front of this test's mock; stops them afterwards."""
    started = []

    def start(plugin_config, **kwargs):
        gw = Gateway(upstream_port=mock.port, plugin_config=plugin_config, **kwargs).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
