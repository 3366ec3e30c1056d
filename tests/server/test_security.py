"""The production profile of `make serve` (tools/serve.py): admin APIs behind a header, TLS on gRPC, HTTPS.

A real tritonserver started the way `make serve` starts it, with certificates made in the test: inference stays
open (and matches the reference) over gRPC+TLS and HTTPS; model-repository, shared-memory, trace and logging
calls without the admin key are refused, over both protocols, and work with it; plain text and untrusted
certificates are refused at the connection.
"""
from __future__ import annotations

import socket
import stat
import time
import urllib.error
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from yolo_triton.serving import security
from yolo_triton.client import Detector, ServerError, ServerUnreachable

from ..helpers import start_serve, stop_serve
from ..helpers import CONF, MODEL, assert_matches, make_certificates

ADMIN_KEY = "test-admin-key-0123"


@pytest.fixture(scope="module")
def secure_server(repository, tmp_path_factory):
    """tools/serve.py --profile production with TLS: (ports dict, certificates, log path)."""
    certs = make_certificates(tmp_path_factory.mktemp("certs"))
    log = tmp_path_factory.mktemp("secure") / "serve.log"
    process, ports = start_serve(repository, log, "--tls-cert", certs["server"], "--tls-key", certs["server_key"],
                                 env={security.ADMIN_KEY_ENV: ADMIN_KEY})
    try:
        yield ports, certs, log
    finally:
        stop_serve(process)


def admin_clients(ports, certs):
    """(protocol, client, extra kwargs that carry the key) for gRPC+TLS and HTTPS."""
    grpc = grpcclient.InferenceServerClient(f"localhost:{ports['grpc']}", ssl=True, root_certificates=str(certs["ca"]))
    https = httpclient.InferenceServerClient(f"localhost:{ports['https']}", ssl=True,
                                             ssl_options={"ca_certs": str(certs["ca"])})
    return [("grpc", grpc), ("https", https)]


def test_inference_is_open_and_matches_reference_over_tls(secure_server, photos, reference_small):
    ports, certs, _ = secure_server
    data = photos["chelsea_jpg"] if "chelsea_jpg" in photos else next(iter(photos.values()))
    expected = reference_small.detect(data, conf=CONF)
    for url, protocol in ((f"localhost:{ports['grpc']}", "grpc"), (f"https://localhost:{ports['https']}", "http")):
        with Detector(url, MODEL, protocol, ssl=True, root_certificates=str(certs["ca"])) as detector:
            assert_matches(detector.detect(data, conf=CONF), expected)


# each admin call, with the arguments it needs; the load request carries a model file in its parameters, the way
# a request could put bytes into the server's filesystem
ADMIN_CALLS = {
    "repository index": lambda c: c.get_model_repository_index(),
    "load with file override": lambda c: c.load_model("evil", config='{"backend": "python"}',
                                                     files={"file:1/model.py": b"import os\n"}),
    "unload": lambda c: c.unload_model(MODEL),
    "register shared memory": lambda c: c.register_system_shared_memory("region", "/yolo_triton_test", 64),
    "system shared memory status": lambda c: c.get_system_shared_memory_status(),
    "cuda shared memory status": lambda c: c.get_cuda_shared_memory_status(),
    "trace settings": lambda c: c.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"}),
    "log settings": lambda c: c.update_log_settings(settings={"log_verbose_level": 1}),
}


@pytest.mark.parametrize("call", ADMIN_CALLS)
def test_admin_apis_refused_without_the_key(secure_server, call):
    ports, certs, _ = secure_server
    for protocol, client in admin_clients(ports, certs):
        with pytest.raises(InferenceServerException) as refused:
            ADMIN_CALLS[call](client)
        message = str(refused.value)
        assert "restricted" in message.lower() and next(iter(security.admin_headers(protocol, ""))) in message, \
            (protocol, message)
        client.close()
    # refused means nothing happened: the model is still loaded, the server still serves
    with grpcclient.InferenceServerClient(f"localhost:{ports['grpc']}", ssl=True,
                                          root_certificates=str(certs["ca"])) as client:
        assert client.is_server_ready() and client.is_model_ready(MODEL)
        # the refused trace update changed nothing (read back with the key)
        trace = client.get_trace_settings(headers=security.admin_headers("grpc", ADMIN_KEY), as_json=True)
        assert trace["settings"]["trace_level"]["value"] == ["OFF"], trace


def test_admin_apis_work_with_the_key(secure_server):
    ports, certs, _ = secure_server
    for protocol, client in admin_clients(ports, certs):
        headers = security.admin_headers(protocol, ADMIN_KEY)
        # the other protocol's header does not open this one
        other = security.admin_headers("http" if protocol == "grpc" else "grpc", ADMIN_KEY)
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_repository_index(headers=other)
        index = client.get_model_repository_index(headers=headers)
        names = [m.name for m in index.models] if protocol == "grpc" else [m["name"] for m in index]
        assert MODEL in names
        client.load_model(MODEL, headers=headers)  # reload of the same model: allowed and harmless
        assert client.is_model_ready(MODEL)
        client.update_log_settings(settings={"log_verbose_level": 0}, headers=headers)
        # a wrong key is as good as none
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_repository_index(headers={k: v + "x" for k, v in headers.items()})
        client.close()
    # a reload replaces the model's stubs: serve.py's watchdog must not take that for a dead stub
    time.sleep(3)
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/v2/models/{MODEL}/ready", timeout=5) as response:
        assert response.status == 200


def test_connections_without_tls_or_trust_are_refused(secure_server, photos):
    ports, certs, _ = secure_server
    data = next(iter(photos.values()))
    # plain gRPC to the TLS port, and TLS without trusting the CA (the system store does not know it)
    for kwargs in ({}, {"ssl": True}):
        with pytest.raises(ServerUnreachable):
            Detector(f"localhost:{ports['grpc']}", MODEL, "grpc", timeout=5, **kwargs)
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        with urllib.request.urlopen(f"https://localhost:{ports['https']}/v2/health/ready", timeout=5):
            pass
    # plain HTTP to the HTTPS port gets no answer from Triton
    with pytest.raises(OSError):
        with urllib.request.urlopen(f"http://localhost:{ports['https']}/v2/health/ready", timeout=5):
            pass
    # the server is up and still answers trusted clients
    with Detector(f"https://localhost:{ports['https']}", MODEL, "http", ssl=True,
                  root_certificates=str(certs["ca"])) as detector:
        assert isinstance(detector.detect(data, conf=CONF), list)


def test_plain_http_listens_on_localhost_only(secure_server):
    ports, _, log = secure_server
    assert "--http-address=127.0.0.1" in log.read_text()
    assert "****" in log.read_text() and ADMIN_KEY not in log.read_text(), "the printed command must mask the key"
    # from another address of this host: plain HTTP refused, HTTPS reachable
    address = outbound_address()
    if address is None:
        pytest.skip("this host has no address besides loopback")
    with pytest.raises(OSError):
        socket.create_connection((address, ports["http"]), timeout=5).close()
    socket.create_connection((address, ports["https"]), timeout=5).close()


def outbound_address():
    """This host's address on its default route (a UDP connect sends nothing), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_client_reports_a_restricted_api_plainly(secure_server):
    """The client says "restricted" (a ServerError, not retried), not "cannot reach the server"."""
    ports, certs, _ = secure_server
    with Detector(f"localhost:{ports['grpc']}", MODEL, "grpc", ssl=True, root_certificates=str(certs["ca"])) as detector:
        started = time.monotonic()
        with pytest.raises(ServerError, match="is restricted") as refused:
            detector.repository_index()
        assert not isinstance(refused.value, ServerUnreachable) and time.monotonic() - started < 2


def test_admin_key_sources(tmp_path, monkeypatch):
    key_file = tmp_path / "keys" / "admin-key"
    key, source = security.admin_key(key_file, environ={})
    assert len(key) >= 24 and "new" in source
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert security.admin_key(key_file, environ={}) == (key, str(key_file))  # the same key next time
    assert security.admin_key(key_file, environ={security.ADMIN_KEY_ENV: "from-env"})[0] == "from-env"
    for bad in ("", "a:b", "a=b", "a,b", "a b"):
        with pytest.raises(ValueError):
            security.restricted_flags(bad)
    flags = security.restricted_flags("k")
    assert flags == ["--grpc-restricted-protocol=model-repository,shared-memory,trace,logging:admin-key=k",
                     "--http-restricted-api=model-repository,shared-memory,trace,logging:admin-key=k"]
