"""Past one machine, on Ray: bench matrices fanned out over a cluster's nodes (``bench.py``),
``sdopt optimize``'s candidates built in parallel (``optimize.py``), and ``sdopt serve`` as a
Ray Serve deployment with replicas (``serve.py``). ``connect.py`` joins or starts the cluster;
``resources.py`` turns a hardware profile's ``[resources]`` into what a Ray task asks for.

Ray is the ``ray`` extra (``pip install 'sdopt[ray]'``); nothing here is imported by ``import sdopt``.
docs/ray.md has the set-up of a real multi-node cluster.
"""
