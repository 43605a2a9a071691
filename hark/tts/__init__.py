"""hark.tts"""
