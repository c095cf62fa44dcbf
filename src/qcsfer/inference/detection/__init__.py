"""Face detectors ported from other frameworks: MediaPipe BlazeFace (network, decoding, detector).

`net.py` is the network, `convert.py` maps a TF.js graph onto it and writes the shipped weights,
`decode.py` turns its raw outputs into boxes (anchors, decoding, NMS) and `blazeface.py` is the
detector `make_detector("blazeface")` returns.
"""
