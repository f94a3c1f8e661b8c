def main() -> int:
    print("pxo 0.1.0")
    return 0
