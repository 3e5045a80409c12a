"""Models: the MLP of Bengio et al. (2003) as a Keras functional model.

    mlp.py       CharMLP, build_model, compile_model, make_optimizer
    extend.py    a trained model's weights in a model whose vocabulary has new characters
"""
