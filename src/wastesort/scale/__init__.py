"""Scale-out: the Kubernetes manifests' facts (deploy/k8s), and several tritonserver replicas
behind HAProxy with Prometheus on loopback (``make scale-demo``)."""
