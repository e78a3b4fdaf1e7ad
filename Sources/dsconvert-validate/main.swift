import CLI
import DSConvertCommands
import Foundation

exit(CommandLineTool.runSingle(ValidateCommand.self, invocation: "dsconvert-validate", arguments: Array(CommandLine.arguments.dropFirst())))
