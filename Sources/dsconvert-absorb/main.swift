import CLI
import DSConvertCommands
import Foundation

exit(CommandLineTool.runSingle(AbsorbCommand.self, invocation: "dsconvert-absorb", arguments: Array(CommandLine.arguments.dropFirst())))
