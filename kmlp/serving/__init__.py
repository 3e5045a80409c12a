"""Serving: TensorFlow Serving's REST API over a run's exported SavedModel, and a playground page.

    app.py           the web application: its routes, Work (the model calls' threads), kmlp serve
    connections.py   BoundedH11Protocol: each connection's timeouts, the bound on a request head,
                     refused bodies dropped before the answer, and the cap on open connections
    playground.py    Playground, the page's API: sampled names with their marks, next-character
                     probabilities, the embedding in 2-D
    served_model.py  ServedModel: one SavedModel version answering status, metadata and predict
    rest.py          TensorFlow Serving's JSON bodies: JSON <-> tensors, RequestError
    limits.py        Limits: every bound of kmlp serve
    playground/      the page's static files
"""
