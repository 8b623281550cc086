"""`--web-config-file`: TLS and basic auth for every HTTP endpoint, in the Prometheus
exporter-toolkit's format (the `--web.config.file` of statsd_exporter, node_exporter, Prometheus):

    tls_server_config:
      cert_file: server.crt          # or cert: <PEM>
      key_file: server.key           # or key: <PEM>
      client_auth_type: RequireAndVerifyClientCert   # NoClientCert (default), ...
      client_ca_file: ca.crt
      min_version: TLS12             # TLS10 .. TLS13
      max_version: TLS13
    basic_auth_users:
      alice: $2y$10$...              # bcrypt hashes (htpasswd -nBC 10 "")

With basic auth, the health endpoints (PROBE_PATHS) still answer without credentials, for the
kubelet, but say only OK or "not ready". Every mistake is a one-line WebConfigError naming the
key. Settings the toolkit has and we do not (cipher_suites, curve_preferences, http_server_config,
rate_limit) are refused by name rather than ignored: a user who set them expects them to work.
An empty file, `tls_server_config: {}` and bcrypt costs over MAX_COST are mistakes too.

The file is read again when it changes, so renewed certificates are picked up without a restart;
a change that would turn TLS or basic auth off on a running server (a truncated file, an editor's
half-written save) is refused and logged, and the last config stays: turning them off takes a
restart. A wrong password and an unknown user cost the same bcrypt check (a dummy hash of the same
cost), so the answer time does not tell which users exist.
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass, field

from monitor.config import ConfigError, read_yaml

CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_OPTIONAL,
               "RequireAnyClientCert": ssl.CERT_REQUIRED, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1, "TLS12": ssl.TLSVersion.TLSv1_2,
            "TLS13": ssl.TLSVersion.TLSv1_3}
TLS_KEYS = {"cert", "cert_file", "key", "key_file", "client_auth_type", "client_ca_file", "min_version",
            "max_version"}
UNSUPPORTED = {"cipher_suites", "curve_preferences", "prefer_server_cipher_suites", "client_allowed_sans"}
MIN_COST, MAX_COST = 4, 14  # bcrypt: cost 14 is about a second a check here; 17 would hold a slot for 10 s


# The kubelet's httpGet probes cannot send credentials: these answer without them, with their status
# code and a fixed word (OK / not ready), never the reason, which only an authenticated caller sees.
PROBE_PATHS = frozenset(("/-/healthy", "/-/ready", "/-/ready/sla"))


class WebConfigError(ConfigError):
    pass


@dataclass
class WebConfig:
    context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    _dummy: bytes = b""  # checked for an unknown user, at the cost of the real ones
    _ok: set[bytes] = field(default_factory=set)  # sha256 of credentials bcrypt accepted (bcrypt is slow)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def tls(self) -> bool:
        return self.context is not None

    def allows(self, authorization: str | None) -> bool:
        """Whether a request's Authorization header passes basic auth (always, without users). The
        scheme is case-insensitive (RFC 7617); a known user with a wrong password and an unknown
        user take one bcrypt check each."""
        if not self.users:
            return True
        scheme, _, creds = (authorization or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(creds.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        key = hashlib.sha256(f"{user}\0{password}".encode() + (hashed or b"")).digest()
        if hashed is not None and key in self._ok:
            return True
        import bcrypt

        try:
            good = bcrypt.checkpw(password.encode(), hashed or self._dummy) and hashed is not None
        except ValueError:
            good = False
        if good:
            with self._lock:
                if len(self._ok) > 1024:  # bounded: a handful of users, each with one password
                    self._ok.clear()
                self._ok.add(key)
        return good


def _pem_file(pem: str) -> str:
    f = tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False)  # noqa: SIM115 - read by ssl, then removed
    f.write(pem)
    f.close()
    return f.name


def _context(tls: dict, path: str) -> ssl.SSLContext:
    where = f"web config {path}: tls_server_config"
    unknown = set(tls) - TLS_KEYS
    if unknown:
        key = sorted(map(str, unknown))[0]
        raise WebConfigError(f"{where}.{key}: " + ("not supported here" if key in UNSUPPORTED else "unknown setting"))
    for inline in ("cert", "key"):
        if tls.get(inline) and tls.get(inline + "_file"):
            raise WebConfigError(f"{where}: give {inline} or {inline}_file, not both")
    if not (tls.get("cert") or tls.get("cert_file")) or not (tls.get("key") or tls.get("key_file")):
        raise WebConfigError(f"{where}: needs a certificate and a key (cert_file and key_file)")
    temp = [_pem_file(str(tls[k])) for k in ("cert", "key") if tls.get(k)]
    cert = temp[0] if tls.get("cert") else tls.get("cert_file")
    key = temp[-1] if tls.get("key") else tls.get("key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        why = getattr(e, "strerror", None) or e
        raise WebConfigError(f"{where}: cannot load the certificate and key: {why}") from None
    finally:
        for t in temp:
            os.unlink(t)
    try:
        ctx.minimum_version = VERSIONS[str(tls.get("min_version", "TLS12"))]
        ctx.maximum_version = VERSIONS[str(tls.get("max_version", "TLS13"))]
    except KeyError as e:
        raise WebConfigError(f"{where}: TLS version {e.args[0]!r} is not one of {', '.join(VERSIONS)}") from None
    auth = str(tls.get("client_auth_type", "NoClientCert"))
    if auth not in CLIENT_AUTH:
        raise WebConfigError(f"{where}.client_auth_type: one of {', '.join(CLIENT_AUTH)}, not {auth!r}")
    ctx.verify_mode = CLIENT_AUTH[auth]
    if auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        if not tls.get("client_ca_file"):
            raise WebConfigError(f"{where}: client_auth_type {auth} needs client_ca_file")
    if tls.get("client_ca_file"):
        try:
            ctx.load_verify_locations(str(tls["client_ca_file"]))
        except (OSError, ssl.SSLError) as e:
            raise WebConfigError(f"{where}.client_ca_file: {getattr(e, 'strerror', None) or e}") from None
    return ctx


def load(path: str) -> WebConfig:
    doc = read_yaml(path, "web config", WebConfigError)
    if doc is None:
        raise WebConfigError(f"web config {path} is empty (no tls_server_config, no basic_auth_users): "
                             "give its settings, or run without --web-config-file")
    if not isinstance(doc, dict):
        raise WebConfigError(f"web config {path}: must be a mapping")
    for key in doc:
        if key not in ("tls_server_config", "basic_auth_users"):
            raise WebConfigError(f"web config {path}: {key!r} is " + (
                "not supported here" if key in ("http_server_config", "rate_limit") else "not a setting"))
    cfg = WebConfig()
    if "tls_server_config" in doc:  # present and empty is a mistake (as in exporter-toolkit), not "no TLS"
        tls = doc["tls_server_config"]
        if not isinstance(tls, dict):
            raise WebConfigError(f"web config {path}: tls_server_config must be a mapping with cert_file "
                                 "and key_file")
        cfg.context = _context(tls, path)
    users = doc.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise WebConfigError(f"web config {path}: basic_auth_users must map user names to bcrypt hashes")
    for user, hashed in users.items():
        h = str(hashed)
        if not h.startswith(("$2a$", "$2b$", "$2y$")) or len(h) != 60 or not h[4:6].isdigit():
            raise WebConfigError(f"web config {path}: basic_auth_users.{user}: not a bcrypt hash "
                                 "(make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')")
        cost = int(h[4:6])
        if not MIN_COST <= cost <= MAX_COST:
            raise WebConfigError(f"web config {path}: basic_auth_users.{user}: bcrypt cost {cost} is outside "
                                 f"{MIN_COST}..{MAX_COST} (each request would hold a connection for the check; "
                                 "htpasswd -nBC 10 makes cost 10)")
        cfg.users[str(user)] = h.encode()
    if cfg.users:
        import bcrypt

        cost = max(int(h[4:6]) for h in cfg.users.values())
        cfg._dummy = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(cost))
    return cfg


class Watched:
    """The web config, read again when its file changes (renewed certificates, new users). A new
    version that fails to load, or that would turn TLS or basic auth off, is refused: the last one
    stays, and the refusal is logged and counted (`refused`)."""

    def __init__(self, path: str):
        self.path = path
        self.mtime = self._stat()
        self.current = load(path)
        self.refused = 0
        self._lock = threading.Lock()

    def _stat(self) -> tuple:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def get(self) -> WebConfig:
        try:
            mtime = self._stat()
        except OSError:
            return self.current
        if mtime == self.mtime or not self._lock.acquire(blocking=False):
            return self.current
        try:
            self.mtime = mtime
            why = ""
            try:
                new = load(self.path)
            except WebConfigError as e:
                why = str(e)
            else:
                if self.current.tls and not new.tls:
                    why = f"web config {self.path}: it would turn TLS off; restart to do that"
                elif self.current.users and not new.users:
                    why = f"web config {self.path}: it would turn basic auth off; restart to do that"
                else:
                    self.current = new
            if why:  # keep serving with what worked
                import logging

                self.refused += 1
                logging.getLogger("airflow_monitor.web").error("web config not reloaded, keeping the last: %s", why)
        finally:
            self._lock.release()
        return self.current


def wrap(watched: Watched | None, sock):
    """An accepted socket, TLS-wrapped when the web config has a certificate; the handshake is left
    to handshake(), in the connection's own thread, so a slow client holds no accept loop."""
    cfg = watched.get() if watched is not None else None
    if cfg is not None and cfg.context is not None:
        return cfg.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    return sock


def handshake(request, timeout: float) -> bool:
    """Complete a TLS handshake (a no-op for a plain socket); False when it fails."""
    if not isinstance(request, ssl.SSLSocket):
        return True
    request.settimeout(timeout)
    try:
        request.do_handshake()
    except (OSError, ssl.SSLError):  # a plain-HTTP client, a wrong certificate, a stalled handshake
        return False
    return True
