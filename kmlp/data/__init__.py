"""Data: a names file in, shuffled (context, next character) minibatches out.

    files.py     reading a names file with every check, fetching names.txt, hashing
    streaming.py the same checks on names read as they come, in bounded pieces
    vocab.py     Vocabulary: characters to indices and back, 0 the boundary token
    splits.py    train/dev/test by name (80/10/10, deterministic), each split one token stream
    pipeline.py  NamesData: the vocabulary and splits of a file, and its tf.data minibatches
"""
