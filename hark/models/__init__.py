"""hark.models"""
