"""Export: a run as a TensorFlow SavedModel for serving, or a LiteRT model for devices.

    savedmodel.py  ServingModel's signatures (next character, generate, score) and export_run
    litert.py      names from an exported model.tflite with the LiteRT interpreter alone
"""
