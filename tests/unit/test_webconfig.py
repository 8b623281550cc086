"""--web-config-file: the exporter-toolkit's format; each mistake a one-line error naming its key."""

import base64

import bcrypt
import pytest

from monitor.http.webconfig import WebConfigError, load


@pytest.mark.parametrize("text, message", [
    ("tls_server_config:\n  cert_file: /nope.crt\n  key_file: /nope.key\n", "cannot load the certificate"),
    ("tls_server_config:\n  cert_file: a.crt\n", "needs a certificate and a key"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n", "cipher_suites: not supported"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth: x\n", "client_auth: unknown setting"),
    ("rate_limit: {interval: 1s}\n", "'rate_limit' is not supported here"),
    ("basic_auth_user: {}\n", "'basic_auth_user' is not a setting"),
    ("basic_auth_users:\n  alice: plain-text\n", "basic_auth_users.alice: not a bcrypt hash"),
])
def test_mistakes_are_one_line_errors(tmp_path, text, message):
    p = tmp_path / "web.yml"
    p.write_text(text)
    with pytest.raises(WebConfigError) as e:
        load(str(p))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_basic_auth_checks_bcrypt_hashes_as_htpasswd_makes_them(tmp_path):
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
    p = tmp_path / "web.yml"
    p.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")
    cfg = load(str(p))

    def header(user, pw):
        return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()

    assert cfg.allows(header("alice", "pw")) and cfg.allows(header("alice", "pw"))  # the second from the cache
    assert not cfg.allows(header("alice", "nope")) and not cfg.allows(header("bob", "pw"))
    assert not cfg.allows(None) and not cfg.allows("Bearer x") and not cfg.allows("Basic !!!")
