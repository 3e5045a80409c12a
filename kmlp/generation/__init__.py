"""Generation: drawing names from a trained model, and scoring names under it.

    drawing.py   how a character is drawn (temperature, top-k, top-p) from counter-based random
                 numbers, the same in TensorFlow, NumPy and LiteRT
    sample.py    NameModel: sampling and scoring in bounded, compiled chunks
    marks.py     names sampled from a run, marked train, dev/test or new
"""
