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
def gateway(mock):
    """Starts Envoy gateways in front of this test's mock; stops them afterwards.

    gateway(plugin_config, **options) takes harness.Gateway's options (concurrency,
    as_string, clusters, dynamic, envoy_args, filters_before) and expect_failure for a configuration
    Envoy must refuse.
    """
    started = []

    def start(plugin_config, expect_failure=False, **options):
        gw = Gateway(upstream_port=mock.port, plugin_config=plugin_config, **options).start(expect_failure)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
