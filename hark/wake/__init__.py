"""hark.wake"""
