"""The shipped configurations, as package data (``ctxroute.config``): ``demo.yaml`` is what
``ctxroute demo`` runs, ``router.yaml`` the documented example for ``ctxroute serve``."""
