"""hark.asr"""
