"""A JSON document in a ConfigMap, written with compare-and-swap on its resourceVersion: the backend of
the healer's state (monitor.alerting.docstore), which every replica reads and only the leader writes."""

from __future__ import annotations

import json

from monitor.errors import StoreError, WriteConflict
from monitor.kube.client import Kube, KubeError

KEY = "state.json"
LIMIT = 900 << 10  # a ConfigMap holds at most 1 MiB


class ConfigMapDoc:
    def __init__(self, kube: Kube, name: str):
        self.kube, self.name = kube, name

    def read(self) -> tuple[dict, str]:
        try:
            resp = self.kube._call(f"cannot read ConfigMap {self.name}", self.kube.core.read_namespaced_config_map,
                                   self.name, self.kube.namespace, _preload_content=False)
        except KubeError as e:
            if e.status == 404:
                return {}, ""
            raise StoreError(str(e)) from None
        cm = json.loads(resp.data)
        raw = (cm.get("data") or {}).get(KEY) or "{}"
        try:
            doc = json.loads(raw)
        except ValueError:
            raise StoreError(f"ConfigMap {self.name}: {KEY} is not JSON (edited by hand?); fix or delete it") from None
        return (doc if isinstance(doc, dict) else {}), str(cm["metadata"]["resourceVersion"])

    def write(self, doc: dict, version: str) -> str:
        data = json.dumps(doc, separators=(",", ":"))
        if len(data) > LIMIT:
            raise StoreError(f"ConfigMap {self.name}: the state grew to {len(data)} bytes, over what a ConfigMap "
                             "holds")
        meta = {"name": self.name, "namespace": self.kube.namespace,
                "labels": {"app.kubernetes.io/managed-by": "airflow-monitor"}}
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {KEY: data}}
        k = self.kube
        try:
            if not version:
                resp = k._call(f"cannot create ConfigMap {self.name}", k.core.create_namespaced_config_map,
                               k.namespace, body, retry=False, _preload_content=False)
            else:
                meta["resourceVersion"] = version
                resp = k._call(f"cannot write ConfigMap {self.name}", k.core.replace_namespaced_config_map, self.name,
                               k.namespace, body, retry=False, _preload_content=False)
        except KubeError as e:
            if e.status == 409:
                raise WriteConflict(str(e)) from None
            raise StoreError(str(e)) from None
        return str(json.loads(resp.data)["metadata"]["resourceVersion"])
