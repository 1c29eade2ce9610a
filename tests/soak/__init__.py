"""Long runs, only with CCNET_SOAK=1 (``make soak``)."""
