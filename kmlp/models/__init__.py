"""Models: the MLP of Bengio et al. (2003) and the lecture's hierarchical model, as Keras functional models.

    mlp.py           CharMLP, build_model (either architecture), compile_model, make_optimizer
    hierarchical.py  the levels that fuse consecutive positions (--arch hierarchical)
    extend.py        a trained model's weights in a model whose vocabulary has new characters
"""
