from genservice.demo_llm.app import main

main()
