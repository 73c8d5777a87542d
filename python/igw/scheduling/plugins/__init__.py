"""Built-in plugin implementations (registered in ``igw.scheduling.wiring``)."""
