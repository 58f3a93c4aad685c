print("@@vm-test hook stub")
