"""One node of the simulated Ray cluster, in a process (and process group) of its own, built as Ray's own
cluster utilities build nodes (``ray.cluster_utils.Cluster`` for the head, ``ray._private.node.Node`` as
``Cluster.add_node`` does for a worker), every server on 127.0.0.1:

    python ray_node.py head   OUT_JSON GCS_PORT NUM_CPUS
    python ray_node.py worker OUT_JSON GCS_ADDRESS NUM_CPUS

Writes ``{"node_id", "address", "pid"}`` to OUT_JSON, then waits for SIGTERM and stops the node's
processes. SIGKILL to the process group instead is a machine that dies. ``$RAY_TMPDIR`` keeps the node's
files (and the cluster address file) out of the machine's shared ``/tmp/ray``.
"""

import json
import os
import signal
import sys
import threading

role, out, where, num_cpus = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
signal.signal(signal.SIGINT, lambda *a: stop.set())
small = {"num_cpus": num_cpus, "num_gpus": 0, "object_store_memory": 100 * 1024 * 1024, "node_ip_address": "127.0.0.1"}

if role == "head":
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={**small, "gcs_server_port": int(where), "include_dashboard": False}
    )
    node, address = cluster.head_node, cluster.address
else:
    import ray._private.node
    import ray._private.parameter

    params = ray._private.parameter.RayParams(
        **small, gcs_address=where, min_worker_port=0, max_worker_port=0, include_log_monitor=False, node_manager_port=0
    )
    node, address = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True), where

with open(out + ".tmp", "w") as f:
    json.dump({"node_id": node.node_id, "address": address, "pid": os.getpid()}, f)
os.replace(out + ".tmp", out)
stop.wait()
node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
