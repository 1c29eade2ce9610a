"""DIRAC's Configuration Server on ccnet: ``core`` (pure: cfg snapshots, versions, commit
checks, workers), ``state`` (master and worker on the reactor), ``service`` (the
``Configuration/Server`` RPC service). See docs/rpc.md "Configuration Server"."""
