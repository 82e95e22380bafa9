
#compdef kptrace

_kptrace_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _KPTRACE_COMPLETE=complete_zsh kptrace)
}

compdef _kptrace_completion kptrace

