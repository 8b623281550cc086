import os

import pytest
from hypothesis import settings
from prometheus_client.parser import text_string_to_metric_families

from monitor.bridge.exposition import StoreView
from monitor.bridge.ingest import Ingest
from monitor.bridge.mapper import Mapper
from monitor.bridge.store import Store

# 150 examples a property in the suite; HYPOTHESIS_PROFILE=deep for a longer local run
settings.register_profile("suite", max_examples=150)
settings.register_profile("deep", max_examples=5000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))


class Harness:
    def __init__(self, **kw):
        store_kw = {k: kw.pop(k) for k in ("default_ttl", "max_series_per_family", "max_series",
                                                    "max_label_bytes", "max_series_label_bytes") if k in kw}
        self.store = Store(**store_kw)
        self.ingest = Ingest(kw.pop("mapper", None) or Mapper(), self.store, **kw)
        self.view = StoreView(self.store.vals)  # the web process's side, fed the same journal
        self.now = 1000.0

    def send(self, *packets, transport="udp"):
        for p in packets:
            self.ingest.handle(p if isinstance(p, bytes) else p.encode(), transport, self.now)

    def text(self) -> str:
        self.view.apply(self.store.take_journal())
        return self.view.text()

    def samples(self, name: str) -> dict[tuple, float]:
        out = {}
        for fam in text_string_to_metric_families(self.text()):
            for s in fam.samples:
                if s.name == name:
                    out[tuple(sorted(s.labels.items()))] = s.value
        return out

    def value(self, name: str, **labels) -> float | None:
        return self.samples(name).get(tuple(sorted(labels.items())))


@pytest.fixture
def h():
    return Harness()


@pytest.fixture
def harness():
    return Harness
