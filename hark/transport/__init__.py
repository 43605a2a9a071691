"""hark.transport"""
