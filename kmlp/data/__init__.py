"""Data: a names file in, shuffled (context, next character) minibatches out.

    fetch.py     data/names.txt: fetched from its public address when missing, verified
    files.py     reading a names file once, in bounded pieces, with every check, hashing what was read
    streaming.py names read as they come, or held to be scored; the vocabulary checks
    vocab.py     Vocabulary: characters to indices and back, 0 the boundary token
    splits.py    train/dev/test by name (80/10/10, deterministic), each split one token stream
    pipeline.py  NamesData: the vocabulary and splits of a file, and its tf.data minibatches
"""
