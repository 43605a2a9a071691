"""hark.satellite"""
