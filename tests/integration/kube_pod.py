"""[core] hostname_callable for Airflow processes run as pods of the test Kubernetes API server: in a
real pod the hostname is the pod's name; here every "pod" shares the host's, so the pod's name (set
by the server's kubelet as POD_NAME, as the downward API would) stands in for it."""

import os
import socket


def hostname() -> str:
    return os.environ.get("POD_NAME") or socket.getfqdn()
