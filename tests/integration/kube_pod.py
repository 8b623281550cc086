"""[core] hostname_callable choices for Airflow processes run as pods of the test Kubernetes API server.

In a real pod the hostname is the pod's name and its IP its own; here every "pod" shares the host's, so
the server's kubelet gives each process the pod's name (POD_NAME) and IP (POD_IP), as the downward API
would, and these return them:
- `hostname`: the pod name (Airflow's default, socket.getfqdn, in a real pod);
- `pod_ip`: the pod's IP (airflow.utils.net.get_host_ip_address in a real pod, set by many Kubernetes
  users so the API server can fetch task logs by IP);
- `elsewhere`: a name that is neither (a custom callable, or a node's name without hostNetwork): the
  healer cannot tell which pod such a job belongs to.
"""

import os
import socket


def hostname() -> str:
    return os.environ.get("POD_NAME") or socket.getfqdn()


def pod_ip() -> str:
    return os.environ.get("POD_IP") or socket.gethostbyname(socket.gethostname())


def elsewhere() -> str:
    return "airflow-scheduler-host.internal"
