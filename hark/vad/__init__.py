"""hark.vad"""
