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


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("tls_server_config: {}\n", "needs a certificate and a key"),
    ("tls_server_config:\n", "tls_server_config must be a mapping"),
    ("basic_auth_users:\n  alice: '$2y$17$" + "a" * 53 + "'\n", "bcrypt cost 17 is outside 4..14"),
])
def test_empty_files_empty_tls_and_slow_hashes_are_mistakes(tmp_path, text, message):
    p = tmp_path / "web.yml"
    p.write_text(text)
    with pytest.raises(WebConfigError, match=message):
        load(str(p))


def test_an_unknown_user_costs_a_bcrypt_check_like_a_wrong_password(tmp_path, monkeypatch):
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    p = tmp_path / "web.yml"
    p.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")
    cfg = load(str(p))
    checked = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, h: checked.append(h[:7]) or real(pw, h))

    def header(user, pw, scheme="Basic"):
        return f"{scheme} " + base64.b64encode(f"{user}:{pw}".encode()).decode()

    assert not cfg.allows(header("mallory", "pw")) and not cfg.allows(header("alice", "nope"))
    assert checked == [b"$2b$04$", b"$2b$04$"], "one check of the same cost each"
    assert cfg.allows(header("alice", "pw", "basic")) and cfg.allows(header("alice", "pw", "BASIC"))  # RFC 7617


def test_a_change_that_would_turn_auth_or_tls_off_is_refused_and_the_last_config_stays(tmp_path):
    import os

    from monitor.http.webconfig import Watched

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    p = tmp_path / "web.yml"
    p.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")
    w = Watched(str(p))
    for i, text in enumerate(["", "basic_auth_users: {}\n", "rate_limit: 1\n"]):
        p.write_text(text)
        os.utime(p, ns=(i + 1, (i + 1) * 10**9))
        assert w.get().users, text
    assert w.refused == 3
    hashed2 = bcrypt.hashpw(b"pw2", bcrypt.gensalt(4)).decode()
    p.write_text(f"basic_auth_users:\n  bob: '{hashed2}'\n")  # a real change is taken
    os.utime(p, ns=(9, 9 * 10**9))
    assert set(w.get().users) == {"bob"}
