"""A JSON document in a ConfigMap, written with compare-and-swap on its resourceVersion: the backend of
the healer's state (monitor.alerting.docstore), which every replica reads and only the leader writes."""

from __future__ import annotations

import json

from monitor.errors import StoreError, WriteConflict
from monitor.kube.client import Kube, KubeError, json_object

KEY = "state.json"
LIMIT = 900 << 10  # a ConfigMap holds at most 1 MiB


class ConfigMapDoc:
    def __init__(self, kube: Kube, name: str):
        self.kube, self.name = kube, name

    def read(self) -> tuple[dict, str]:
        try:
            cm = self.kube.json(f"cannot read ConfigMap {self.name}", self.kube.core.read_namespaced_config_map,
                                self.name, self.kube.namespace)
        except KubeError as e:
            if e.status == 404:
                return {}, ""
            raise StoreError(str(e)) from None
        raw = (cm.get("data") or {}).get(KEY) or "{}"
        try:
            doc = json_object(raw)
        except ValueError as e:
            raise StoreError(f"{KEY} is {e} (edited by hand?); fix or delete it") from None
        return doc, str((cm.get("metadata") or {}).get("resourceVersion") or "")

    def write(self, doc: dict, version: str) -> str:
        data = json.dumps(doc, separators=(",", ":"))
        if len(data) > LIMIT:
            raise StoreError(f"the state grew to {len(data)} bytes, over what a ConfigMap "
                             "holds")
        meta = {"name": self.name, "namespace": self.kube.namespace,
                "labels": {"app.kubernetes.io/managed-by": "airflow-monitor"}}
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {KEY: data}}
        k = self.kube
        try:
            if not version:
                resp = k.json(f"cannot create ConfigMap {self.name}", k.core.create_namespaced_config_map,
                              k.namespace, body, retry=False)
            else:
                meta["resourceVersion"] = version
                resp = k.json(f"cannot write ConfigMap {self.name}", k.core.replace_namespaced_config_map, self.name,
                              k.namespace, body, retry=False)
        except KubeError as e:
            if e.status == 409:
                raise WriteConflict(str(e)) from None
            raise StoreError(str(e)) from None
        return str((resp.get("metadata") or {}).get("resourceVersion") or "")
