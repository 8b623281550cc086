"""helm/airflow-monitor rendered by a real helm: lint, Kubernetes schema validation, wiring
between objects, the rules and dashboards it ships, and the rendered pod run as the kubelet would
run it (its args, env from Secrets, config from the ConfigMap) against the session Airflow."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from testkit.airflow import free_port
from testkit.bridge import BridgeProcess
from testkit.servers.opsgenie import OpsGenieServer
from tests.integration.tools import run, tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "airflow-monitor"
K8S_VERSION = "1.31.0"
SECRETS = {("airflow", "password"): "admin", ("opsgenie", "api-key"): "og-test-key"}


def full_values(**extra) -> dict:
    values = {
        "bridge": {"config": {"datadog": "agent", "ttl": "1h"},
                   "mapping": {"mappings": [{"match": "team.*.rows", "name": "team_rows_total",
                                             "labels": {"table": "$1"}}]}},
        "sla": {"enabled": True, "persistence": {"enabled": True},
                "config": {"airflow": {"url": "http://airflow-api-server:8080", "username": "admin"},
                           "notify": {"opsgenie": {"region": "eu"}},
                           "watch": [{"tag": "sla", "rules": [{"max_age": "1h"}]}]}},
        "secrets": {"airflowPassword": {"name": "airflow", "key": "password"},
                    "opsgenieApiKey": {"name": "opsgenie", "key": "api-key"}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True},
        "grafanaDashboards": {"enabled": True},
    }
    for k, v in extra.items():
        values[k] = {**values.get(k, {}), **v}
    return values


def template(tmp: Path, values: dict | None = None, ok: bool = True, api_versions: tuple[str, ...] = ()
             ) -> subprocess.CompletedProcess:
    args = [tool("helm"), "template", "mon", str(CHART), "--namespace", "monitoring",
            *(f"--api-versions={v}" for v in api_versions)]
    if values is not None:
        (tmp / "values.yaml").write_text(yaml.safe_dump(values))
        args += ["-f", str(tmp / "values.yaml")]
    return run(*args, ok=ok)


def objects(tmp: Path, values: dict | None = None) -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(template(tmp, values).stdout) if d]
    return {d["kind"]: d for d in docs} | {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, dict]:
    return objects(tmp_path_factory.mktemp("helm"), full_values())


def test_helm_lint_strict_with_defaults_and_everything_on(tmp_path):
    run(tool("helm"), "lint", "--strict", str(CHART))
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(full_values()))
    run(tool("helm"), "lint", "--strict", str(CHART), "-f", str(tmp_path / "v.yaml"))


def test_defaults_render_the_bridge_alone(tmp_path):
    objs = objects(tmp_path)
    assert set(k for k in objs if "/" not in k) == {"ServiceAccount", "ConfigMap", "Service", "Deployment"}
    dep = objs["Deployment"]["spec"]
    assert dep["template"]["spec"]["containers"][0]["args"] == ["serve", "--config=/etc/airflow-monitor/config.yaml"]
    assert "strategy" not in dep


def test_every_object_is_valid_kubernetes(rendered, tmp_path):
    docs = [d for d in yaml.safe_load_all(template(tmp_path, full_values()).stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ServiceAccount", "ConfigMap", "ConfigMap", "ConfigMap", "Service", "Deployment",
                            "PersistentVolumeClaim", "ServiceMonitor", "PrometheusRule"])
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            continue   # CRDs: checked field by field below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_service_monitor_and_service_reach_the_pod(rendered):
    svc, dep, sm = rendered["Service"], rendered["Deployment"], rendered["ServiceMonitor"]
    pod = dep["spec"]["template"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    container_ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in pod["spec"]["containers"][0]["ports"]}
    for port in svc["spec"]["ports"]:
        assert container_ports[port["targetPort"]] == (port["port"], port["protocol"])
    assert {p["protocol"] for p in svc["spec"]["ports"] if p["port"] == 9125} == {"UDP", "TCP"}
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["namespaceSelector"]["matchNames"] == ["monitoring"]


def test_the_pod_is_hardened_probed_and_sized(rendered):
    pod = rendered["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "metrics"}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert rendered["Deployment"]["spec"]["strategy"] == {"type": "Recreate"}  # one watcher at a time
    claim = next(v for v in pod["volumes"] if v["name"] == "state")["persistentVolumeClaim"]["claimName"]
    assert claim == rendered["PersistentVolumeClaim"]["metadata"]["name"]


def test_secrets_come_only_from_secret_references(rendered):
    env = rendered["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    source = {e["name"]: e["valueFrom"] for e in env}
    assert source["AIRFLOW_MONITOR_OPSGENIE_API_KEY"]["secretKeyRef"] == {"name": "opsgenie", "key": "api-key"}
    assert source["AIRFLOW_MONITOR_AIRFLOW_PASSWORD"]["secretKeyRef"] == {"name": "airflow", "key": "password"}
    assert source["AIRFLOW_MONITOR_DATADOG_HOST"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert not any("value" in e for e in env)
    config = rendered["ConfigMap/mon-airflow-monitor"]["data"]["config.yaml"]
    assert not re.search(r"\b(password|api_key|token):", config)


def test_prometheus_rule_ships_the_tested_rules(rendered, tmp_path):
    spec = rendered["PrometheusRule"]["spec"]
    assert spec == yaml.safe_load((REPO / "alerts" / "prometheus" / "airflow-rules.yaml").read_text())
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    count = sum(len(g["rules"]) for g in spec["groups"])
    checked = run(tool("promtool"), "check", "rules", str(tmp_path / "rules.yaml")).stdout
    assert f"SUCCESS: {count} rules found" in checked


def test_the_probe_configmap_ships_the_zipapp_into_airflows_namespace(tmp_path):
    """What helm/airflow-values.yaml mounts into the official chart's pods: the built zipapp, byte
    for byte, in the namespace the values name (a ConfigMap volume is read in the pod's own)."""
    import base64

    from monitor.probe.zipapp import build

    objs = objects(tmp_path, {"probe": {"namespace": "airflow"}})
    cm = objs["ConfigMap/airflow-monitor-probe"]
    assert cm["metadata"]["namespace"] == "airflow"
    assert base64.b64decode(cm["binaryData"]["airflow-monitor-probe.pyz"]) == build()
    assert "ConfigMap/airflow-monitor-probe" not in objects(tmp_path, {"probe": {"enabled": False}})


def test_grafana_dashboards_configmap_ships_the_built_dashboards(rendered):
    cm = rendered["ConfigMap/mon-airflow-monitor-dashboards"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    built = {p.name: json.loads(p.read_text()) for p in (REPO / "dashboards" / "grafana").glob("*.json")}
    assert {k: json.loads(v) for k, v in cm["data"].items()} == built


def test_the_schema_stops_bad_values_before_anything_renders(tmp_path):
    r = template(tmp_path, full_values(service={"statsdPort": 70000}), ok=False)
    assert r.returncode != 0 and "statsdPort" in r.stderr
    r = template(tmp_path, full_values(bridge={"config": {"web_listen": ":80"}}), ok=False)
    assert r.returncode != 0 and "web_listen" in r.stderr


def test_the_airflow_chart_snippet_names_this_chart_and_real_airflow_options(venv, tmp_path):
    snippet = yaml.safe_load((REPO / "helm" / "airflow-values.yaml").read_text())
    metrics = snippet["config"]["metrics"]
    options = yaml.safe_load(next(venv.glob("lib/python*/site-packages/airflow/config_templates/config.yml"))
                             .read_text())["metrics"]["options"]
    assert set(metrics) <= set(options), set(metrics) - set(options)
    out = run(tool("helm"), "template", "airflow-monitor", str(CHART), "--namespace", "monitoring").stdout
    svc = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Service")
    assert metrics["statsd_host"] == f"{svc['metadata']['name']}.monitoring.svc"
    assert metrics["statsd_port"] == next(p["port"] for p in svc["spec"]["ports"] if p["protocol"] == "UDP")


@pytest.fixture
def opsgenie():
    server = OpsGenieServer(SECRETS[("opsgenie", "api-key")])
    yield server
    server.close()


def test_the_rendered_pod_runs_the_bridge_and_the_watcher(airflow, opsgenie, tmp_path):
    """Do what the kubelet does with the rendered Deployment: mount the ConfigMap, set env from the
    Secrets, run the container's args with our CLI; then send statsd, read /metrics, see the page."""
    statsd, metrics = free_port(socket.SOCK_DGRAM), free_port()
    values = full_values(service={"statsdPort": statsd, "metricsPort": metrics, "otlpPort": free_port()})
    values["sla"]["config"]["airflow"]["url"] = airflow.api_url
    values["sla"]["config"]["notify"]["opsgenie"]["url"] = opsgenie.url
    values["sla"]["config"]["watcher"] = {"interval": "2s"}
    values["bridge"]["config"] = {"ttl": "1h"}
    objs = objects(tmp_path, values)
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    mounts = {m["name"]: tmp_path / m["name"] for m in c["volumeMounts"]}
    for path in mounts.values():
        path.mkdir()
    for name, text in objs["ConfigMap/mon-airflow-monitor"]["data"].items():
        (mounts["config"] / name).write_text(relocate(text, c, mounts))
    env = {e["name"]: SECRETS[(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])]
           for e in c["env"]}
    args = [relocate(a, c, mounts) for a in c["args"]]
    pod_proc = BridgeProcess.command(tmp_path, args, udp=statsd, http=metrics, env=env,
                                     ready=c["readinessProbe"]["httpGet"]["path"])
    try:
        assert pod_proc.get(c["livenessProbe"]["httpGet"]["path"])[0] == 200
        pod_proc.send_udp("airflow.dagrun.duration.success:1200|ms|#dag_id:helm_dag\nteam.orders.rows:5|c")
        got = pod_proc.wait_for(lambda m: "team_rows_total" in m and "airflow_monitor_sla_cycles_total" in m,
                                timeout=30)
        assert got["team_rows_total"] == {(("table", "orders"),): 5.0}   # the chart's mapping file is used
        assert any(dict(k).get("dag_id") == "helm_dag" for k in got["airflow_dagrun_duration_count"])
        assert sum(got["airflow_monitor_sla_cycles_total"].values()) >= 1     # the watcher reads the real Airflow
        errors = got.get("airflow_monitor_sla_cycle_errors_total", {(): 0})
        assert sum(errors.values()) == 0, pod_proc.log.read_text()
        assert (mounts["state"] / "sla.sqlite").exists()                 # alert state on the state volume
        # the OpsGenie key from the Secret authenticates; a DAG that never ran is paged, once
        opsgenie.wait(lambda og: any(p["alias"] == "airflow-sla:sla_never:max_age" for p in og.pages))
        aliases = [p["alias"] for p in opsgenie.pages]
        assert len(aliases) == len(set(aliases)) and all(a.startswith("airflow-sla:sla_") for a in aliases)
        assert "og-test-key" not in pod_proc.log.read_text()
    finally:
        pod_proc.stop()


def relocate(text: str, container: dict, mounts: dict[str, Path]) -> str:
    """Mount paths (/etc/airflow-monitor/...) to the test's directories, in one pass."""
    to = {m["mountPath"]: str(mounts[m["name"]]) for m in container["volumeMounts"]}
    pattern = "|".join(re.escape(p) for p in sorted(to, key=len, reverse=True))
    return re.sub(rf"(?<![\w/])({pattern})(?=/|$|\s)", lambda m: to[m.group(1)], text, flags=re.M)


def ca_and_server_cert(tmp: Path, names: list[str]) -> dict[str, str]:
    """A CA and a server certificate it signs for `names` (DNS names, and 127.0.0.1), in the keys a
    kubernetes.io/tls Secret from cert-manager has: tls.crt, tls.key, ca.crt."""
    def ossl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
         "-subj", "/CN=test CA")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr", "-subj", f"/CN={names[0]}")
    (tmp / "san.ext").write_text("subjectAltName=" + ",".join([f"DNS:{n}" for n in names] + ["IP:127.0.0.1"]))
    ossl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "tls.crt",
         "-days", "2", "-extfile", "san.ext")
    return {k: (tmp / k).read_text() for k in ("tls.crt", "tls.key", "ca.crt")}


def test_tls_and_basic_auth_from_the_chart_scraped_as_the_operator_would(tmp_path):
    """The chart's web wiring, run as the kubelet runs the pod: the TLS Secret and the chart's web
    config Secret mounted, HTTPS probes answered without credentials, and a real Prometheus scraping
    with what the rendered ServiceMonitor says (scheme, CA and server name, basic auth from Secrets)."""
    import bcrypt

    from tests.integration.tools import Prometheus

    statsd, metrics = free_port(socket.SOCK_DGRAM), free_port()
    secrets = {("scrape-auth", "username"): "prometheus", ("scrape-auth", "password"): "scr4pe-pw"}
    hashed = bcrypt.hashpw(b"scr4pe-pw", bcrypt.gensalt(10)).decode().replace("$2b$", "$2y$", 1)
    values = {"service": {"statsdPort": statsd, "metricsPort": metrics, "otlpPort": free_port()},
              "web": {"tls": {"secretName": "mon-tls"}, "basicAuthUsers": {"prometheus": hashed}},
              "serviceMonitor": {"enabled": True, "basicAuth": {"username": {"name": "scrape-auth", "key": "username"},
                                                               "password": {"name": "scrape-auth", "key": "password"}}}}
    objs = objects(tmp_path, values)
    c = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    volumes = {v["name"]: v for v in objs["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert c["livenessProbe"]["httpGet"]["scheme"] == c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    endpoint = objs["ServiceMonitor"]["spec"]["endpoints"][0]
    server_name = endpoint["tlsConfig"]["serverName"]
    assert (endpoint["scheme"], server_name) == ("https", "mon-airflow-monitor.monitoring.svc")
    assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": "mon-tls", "key": "ca.crt"}
    # the Secrets the pod mounts: the user's TLS Secret (as cert-manager makes it) and the chart's own
    tls = ca_and_server_cert(tmp_path, [server_name])
    secret_data = {"mon-tls": tls, "mon-airflow-monitor-web": objs["Secret"]["stringData"]}
    mounts = {m["name"]: tmp_path / m["name"] for m in c["volumeMounts"]}
    for name, path in mounts.items():
        path.mkdir()
        for key, text in secret_data.get(volumes[name].get("secret", {}).get("secretName"), {}).items():
            (path / key).write_text(relocate(text, c, mounts))
    for name, text in objs["ConfigMap/mon-airflow-monitor"]["data"].items():
        (mounts["config"] / name).write_text(relocate(text, c, mounts))
    args = [relocate(a, c, mounts) for a in c["args"]]
    proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", *args], stdout=open(tmp_path / "pod.log", "wb"),
                            stderr=subprocess.STDOUT)
    ctx = ssl.create_default_context(cafile=str(mounts["tls"] / "ca.crt"))
    ctx.check_hostname = False  # the kubelet's HTTPS probe does not verify at all; the CA is checked here

    def get(path: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
        req = urllib.request.Request(f"https://127.0.0.1:{metrics}{path}")
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    prom = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if get(c["readinessProbe"]["httpGet"]["path"])[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        assert get(c["livenessProbe"]["httpGet"]["path"]) == (200, "OK\n"), (tmp_path / "pod.log").read_text()
        assert get("/metrics")[0] == 401
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"airflow.scheduler_heartbeat:1|c", ("127.0.0.1", statsd))
        ba = endpoint["basicAuth"]
        prom = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{metrics}", scrape={
            "scheme": endpoint["scheme"],
            "tls_config": {"ca_file": str(mounts["tls"] / "ca.crt"), "server_name": server_name},
            "basic_auth": {"username": secrets[(ba["username"]["name"], ba["username"]["key"])],
                           "password": secrets[(ba["password"]["name"], ba["password"]["key"])]}})
        deadline, got = time.monotonic() + 30, []
        while time.monotonic() < deadline and not got:
            time.sleep(1)
            got = prom.query("airflow_scheduler_heartbeat_total")["data"]["result"]
        assert [r["value"][1] for r in got] == ["1"], json.dumps(prom.get("/api/v1/targets"))[:2000]
        assert "scr4pe-pw" not in (tmp_path / "pod.log").read_text()
    finally:
        if prom is not None:
            prom.stop()
        proc.terminate()
        proc.wait(timeout=10)


def test_the_chart_refuses_web_settings_that_cannot_work(tmp_path):
    r = template(tmp_path, {"web": {"basicAuthUsers": {"prometheus": "plain-password"}}}, ok=False)
    assert r.returncode != 0 and "basicAuthUsers" in r.stderr
    hashed_only = {"basicAuthUsers": {"p": "$2y$10$" + "a" * 53}}
    r = template(tmp_path, {"web": hashed_only, "serviceMonitor": {"enabled": True}}, ok=False)
    assert r.returncode != 0 and "serviceMonitor.basicAuth" in r.stderr
    r = template(tmp_path, {"web": {"tls": {"clientCA": {"secretName": "ca"}}}}, ok=False)
    assert r.returncode != 0 and "web.tls.secretName" in r.stderr
    assert "Secret" not in objects(tmp_path), "no web config unless asked for"


def test_the_healer_gets_the_least_rbac_and_the_only_token(tmp_path):
    """heal.enabled: its own Deployment mounting the service account token (the bridge's pod does not), and
    a Role in Airflow's namespace with only what the healer uses; rollout rights only for restart: rollout."""
    values = full_values(heal={"enabled": True, "replicas": 2, "namespace": "airflow",
                               "config": {"airflow": {"release": "airflow"}, "healer": {"mode": "act"},
                                          "notify": {"opsgenie": {"region": "eu"}}}},
                         secrets={"sqlAlchemyConn": {"name": "airflow-metadata", "key": "connection"}})
    docs = [d for d in yaml.safe_load_all(template(tmp_path, values).stdout) if d]
    for doc in docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com"):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    objs = {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}
    role, binding = objs["Role/mon-airflow-monitor-heal"], objs["RoleBinding/mon-airflow-monitor-heal"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "airflow"
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r.get("resourceNames", ()))): set(r["verbs"])
             for r in role["rules"]}
    lease = "airflow-monitor-heal-airflow"  # one Lease per Airflow release; the state ConfigMap beside it
    assert rules == {(("",), ("pods",), ()): {"list"},
                     (("",), ("pods/eviction",), ()): {"create"},
                     (("",), ("events",), ()): {"list", "watch", "create"},
                     (("coordination.k8s.io",), ("leases",), ()): {"create"},
                     (("coordination.k8s.io",), ("leases",), (lease,)): {"get", "update"},
                     (("",), ("configmaps",), ()): {"create"},
                     (("",), ("configmaps",), (f"{lease}-state",)): {"get", "update"}}
    # its own ServiceAccount, whatever serviceAccount.create says (never the namespace's default)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mon-airflow-monitor-heal",
                                    "namespace": "monitoring"}]
    assert objs["ServiceAccount/mon-airflow-monitor-heal"]["automountServiceAccountToken"] is False
    no_sa = {**values, "serviceAccount": {"create": False}}
    sa_off = {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(template(tmp_path, no_sa).stdout)
              if d}
    assert sa_off["RoleBinding/mon-airflow-monitor-heal"]["subjects"][0]["name"] == "mon-airflow-monitor-heal"
    assert sa_off["Deployment/mon-airflow-monitor-heal"]["spec"]["template"]["spec"]["serviceAccountName"] == \
        "mon-airflow-monitor-heal"
    assert "ValidatingAdmissionPolicy" not in {d["kind"] for d in docs}, "only where the cluster serves it"
    heal = objs["Deployment/mon-airflow-monitor-heal"]["spec"]
    bridge = objs["Deployment/mon-airflow-monitor"]["spec"]
    assert heal["replicas"] == 2 and heal["template"]["spec"]["automountServiceAccountToken"] is True
    assert bridge["template"]["spec"]["automountServiceAccountToken"] is False
    assert objs["ServiceAccount/mon-airflow-monitor"]["automountServiceAccountToken"] is False
    c = heal["template"]["spec"]["containers"][0]
    assert c["args"] == ["heal", "run", "--config=/etc/airflow-monitor/heal.yaml"]
    env = {e["name"]: e.get("valueFrom") for e in c["env"]}
    assert env["AIRFLOW_MONITOR_SQL_ALCHEMY_CONN"] == {"secretKeyRef": {"name": "airflow-metadata",
                                                                        "key": "connection"}}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    cfg = yaml.safe_load(objs["ConfigMap/mon-airflow-monitor-heal"]["data"]["heal.yaml"])
    assert cfg["kubernetes"] == {"namespace": "airflow"}
    assert cfg["lease"] == {"name": lease} and "state_file" not in cfg["healer"]
    from monitor.heal.config import parse

    os.environ["AIRFLOW_MONITOR_SQL_ALCHEMY_CONN"] = "postgresql://u:p@db/airflow"
    os.environ["AIRFLOW_MONITOR_OPSGENIE_API_KEY"] = "k"
    try:
        assert parse(cfg).mode == "act"  # the rendered config is one the healer takes
    finally:
        del os.environ["AIRFLOW_MONITOR_SQL_ALCHEMY_CONN"], os.environ["AIRFLOW_MONITOR_OPSGENIE_API_KEY"]
    # its /metrics is scraped through a Service and ServiceMonitor of its own; the bridge's Service (statsd)
    # and ServiceMonitor never select the healer
    pod_labels = heal["template"]["metadata"]["labels"]
    bridge_pod = bridge["template"]["metadata"]["labels"]
    heal_svc, bridge_svc = objs["Service/mon-airflow-monitor-heal"], objs["Service/mon-airflow-monitor"]

    def selects(selector: dict, labels: dict) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    assert selects(heal_svc["spec"]["selector"], pod_labels) and not selects(heal_svc["spec"]["selector"], bridge_pod)
    assert not selects(bridge_svc["spec"]["selector"], pod_labels)
    sm_heal, sm = objs["ServiceMonitor/mon-airflow-monitor-heal"], objs["ServiceMonitor/mon-airflow-monitor"]
    assert selects(sm_heal["spec"]["selector"]["matchLabels"], heal_svc["metadata"]["labels"])
    assert sm_heal["spec"]["endpoints"][0]["port"] == heal_svc["spec"]["ports"][0]["name"] == "heal-metrics"
    assert selects(sm["spec"]["selector"]["matchLabels"], heal_svc["metadata"]["labels"])  # only matchExpressions
    assert sm["spec"]["selector"]["matchExpressions"] == [{"key": "app.kubernetes.io/component",
                                                           "operator": "DoesNotExist"}]
    assert "app.kubernetes.io/component" in heal_svc["metadata"]["labels"]
    assert "app.kubernetes.io/component" not in bridge_svc["metadata"]["labels"]
    values["heal"]["config"]["healer"]["restart"] = "rollout"
    role = next(d for d in yaml.safe_load_all(template(tmp_path, values).stdout) if d and d["kind"] == "Role")
    assert {"apps"} in [set(r["apiGroups"]) for r in role["rules"]]
    assert {(tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"] if r["apiGroups"] == ["apps"]} == {
        (("deployments", "statefulsets"), ("get", "patch")), (("replicasets",), ("get",))}
    assert not [r for r in role["rules"] if r["resources"] in (["pods/eviction"],) or "delete" in r["verbs"]]
    values["heal"]["config"]["healer"]["restart"] = "delete"
    role = next(d for d in yaml.safe_load_all(template(tmp_path, values).stdout) if d and d["kind"] == "Role")
    assert {(r["resources"][0], tuple(r["verbs"])) for r in role["rules"] if r["resources"][0].startswith("pods")} \
        == {("pods", ("list",)), ("pods", ("delete",))}
    values["heal"]["config"]["healer"]["mode"] = "fix"
    assert "mode" in template(tmp_path, values, ok=False).stderr


def test_the_sla_watcher_can_run_in_the_healers_replicas(tmp_path):
    """sla.runWith: healer: the watcher leaves the bridge's pod for the healer's Deployment (two replicas,
    one Lease, one page); without heal.enabled the chart says why and renders nothing."""
    values = full_values(heal={"enabled": True, "replicas": 2, "config": {"airflow": {"release": "airflow"}}},
                         sla={"runWith": "healer"},
                         secrets={"sqlAlchemyConn": {"name": "airflow-metadata", "key": "connection"}})
    objs = objects(tmp_path, values)
    bridge = objs["Deployment/mon-airflow-monitor"]["spec"]
    heal = objs["Deployment/mon-airflow-monitor-heal"]["spec"]
    assert bridge["template"]["spec"]["containers"][0]["args"] == ["serve",
                                                                  "--config=/etc/airflow-monitor/config.yaml"]
    assert "strategy" not in bridge and "PersistentVolumeClaim" not in objs
    args = heal["template"]["spec"]["containers"][0]["args"]
    assert args[-1] == "--sla-config=/etc/airflow-monitor/sla.yaml" and heal["replicas"] == 2
    env = {e["name"] for e in heal["template"]["spec"]["containers"][0]["env"]}
    assert {"AIRFLOW_MONITOR_AIRFLOW_PASSWORD", "AIRFLOW_MONITOR_OPSGENIE_API_KEY"} <= env
    sla = yaml.safe_load(objs["ConfigMap/mon-airflow-monitor-heal"]["data"]["sla.yaml"])
    from monitor.sla.config import parse

    os.environ["AIRFLOW_MONITOR_AIRFLOW_PASSWORD"] = os.environ["AIRFLOW_MONITOR_OPSGENIE_API_KEY"] = "x"
    try:
        assert parse(sla).state_file == "/var/lib/airflow-monitor/sla.sqlite"
    finally:
        del os.environ["AIRFLOW_MONITOR_AIRFLOW_PASSWORD"], os.environ["AIRFLOW_MONITOR_OPSGENIE_API_KEY"]
    values["heal"]["enabled"] = False
    assert "sla.runWith: healer needs heal.enabled" in template(tmp_path, values, ok=False).stderr


def test_the_admission_policy_renders_where_asked_and_two_replicas_need_the_lease(tmp_path):
    """`helm template` without --api-versions (as GitOps tools run it) cannot tell whether the cluster
    serves ValidatingAdmissionPolicy: `admissionPolicy.enabled: true` renders it all the same, `auto`
    (the default) only where served. Two healer replicas without the Lease would both act: refused."""
    values = full_values(heal={"enabled": True, "namespace": "airflow", "config": {"airflow": {"release": "af"}}},
                         secrets={"sqlAlchemyConn": {"name": "airflow-metadata", "key": "connection"}})
    kinds = {d["kind"] for d in yaml.safe_load_all(template(tmp_path, values).stdout) if d}
    assert "ValidatingAdmissionPolicy" not in kinds
    forced = {**values, "heal": {**values["heal"], "admissionPolicy": {"enabled": True}}}
    kinds = {d["kind"] for d in yaml.safe_load_all(template(tmp_path, forced).stdout) if d}
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= kinds
    off = {**values, "heal": {**values["heal"], "admissionPolicy": {"enabled": False}}}
    kinds = {d["kind"] for d in yaml.safe_load_all(template(tmp_path, off, api_versions=(
        "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",)).stdout) if d}
    assert "ValidatingAdmissionPolicy" not in kinds
    two = {**values, "heal": {**values["heal"], "replicas": 2,
                              "config": {**values["heal"]["config"], "lease": {"enabled": False}}}}
    out = template(tmp_path, two, ok=False)
    assert out.returncode != 0 and "heal.replicas above 1 needs heal.config.lease.enabled" in out.stderr


def test_the_admission_policy_lets_the_healer_restart_only_the_release_schedulers(tmp_path):
    """Where the API server serves ValidatingAdmissionPolicy (1.30+), the chart ships one: the healer's
    ServiceAccount may evict or delete the scheduler pods of Airflow's release and no other pod. Its CEL
    is evaluated here (cel-python) on the admission requests the API server would send."""
    import celpy

    values = full_values(heal={"enabled": True, "namespace": "airflow", "config": {"airflow": {"release": "af"}}},
                         secrets={"sqlAlchemyConn": {"name": "airflow-metadata", "key": "connection"}})
    docs = [d for d in yaml.safe_load_all(template(tmp_path, values, api_versions=(
        "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",)).stdout) if d]
    vap = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy")
    binding = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding")
    for doc in (vap, binding):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert binding["spec"]["policyName"] == vap["metadata"]["name"] and binding["spec"]["validationActions"] == ["Deny"]
    assert vap["spec"]["matchConstraints"]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name":
                                                                                   "airflow"}
    env = celpy.Environment()

    def run(expr: str, request: dict, old=None) -> bool:
        prog = env.program(env.compile(expr))
        return bool(prog.evaluate({"request": celpy.json_to_cel(request), "oldObject": celpy.json_to_cel(old)}))

    healer = {"username": "system:serviceaccount:monitoring:mon-airflow-monitor-heal"}
    (match,) = vap["spec"]["matchConditions"]
    assert run(match["expression"], {"userInfo": healer})
    assert not run(match["expression"], {"userInfo": {"username": "system:serviceaccount:airflow:default"}})
    (rule,) = vap["spec"]["validations"]

    def allowed(op: str, name: str, sub: str = "", labels: dict | None = None) -> bool:
        req = {"userInfo": healer, "operation": op, "name": name, "subResource": sub}
        old = {"metadata": {"name": name, "labels": labels}} if labels is not None else None
        return run(rule["expression"], req, old)

    sched = {"component": "scheduler", "release": "af", "tier": "airflow"}
    assert allowed("CREATE", "af-scheduler-0", "eviction")
    assert allowed("CREATE", "af-scheduler-7d9c8b6f5-m2c8x", "eviction")
    assert not allowed("CREATE", "af-postgresql-0", "eviction")
    assert not allowed("CREATE", "other-scheduler-0", "eviction")
    assert allowed("DELETE", "af-scheduler-0", labels=sched)
    assert not allowed("DELETE", "af-postgresql-0", labels={"app.kubernetes.io/name": "postgresql"})
    assert not allowed("DELETE", "af-worker-1", labels={**sched, "component": "worker"})
    assert not allowed("DELETE", "x-scheduler-0", labels={**sched, "release": "x"})
