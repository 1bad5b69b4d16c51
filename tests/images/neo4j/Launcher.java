// Launcher of the neo4j stand-in image: one JVM does what the official image does with two
// (`neo4j-admin dbms set-initial-password`, then `neo4j console`):
//
//   1. if AIKERNEL_NEO4J_INITIAL_PASSWORD is set (docker-entrypoint.sh sets it from NEO4J_AUTH),
//      run Neo4j's own SetInitialPasswordCommand: it writes data/dbms/auth.ini, which the DBMS
//      reads when it creates the system database on first start (ignored afterwards, as in the
//      official image). AIKERNEL_NEO4J_PASSWORD_CHANGE_REQUIRED=true adds --require-password-change;
//   2. start the server with Neo4j's CommunityBootstrapper (the class behind `neo4j console`):
//      DBMS, Bolt connector, HTTP connector (Jetty), console logging of the user log.
//
// Configuration comes from $NEO4J_CONF/neo4j.conf, written by docker-entrypoint.sh. The JVM
// options (heap) are set by docker-entrypoint.sh on the java command line. SIGTERM/SIGINT are
// handled by the bootstrapper (clean shutdown of the DBMS).
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import org.neo4j.cli.ExecutionContext;
import org.neo4j.commandline.admin.security.SetInitialPasswordCommand;
import org.neo4j.server.CommunityBootstrapper;
import picocli.CommandLine;

public final class Launcher {
    private Launcher() {}

    private static String env(String name, String def) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? def : v;
    }

    public static void main(String[] args) {
        Path home = Path.of(env("NEO4J_HOME", "/var/lib/neo4j")).toAbsolutePath();
        Path confDir = Path.of(env("NEO4J_CONF", home.resolve("conf").toString())).toAbsolutePath();
        Path confFile = confDir.resolve("neo4j.conf");
        if (!Files.isRegularFile(confFile)) {
            System.err.println("Launcher: " + confFile + " does not exist");
            System.exit(1);
        }

        String password = System.getenv("AIKERNEL_NEO4J_INITIAL_PASSWORD");
        if (password != null) {
            List<String> cmdArgs = new ArrayList<>();
            if ("true".equalsIgnoreCase(env("AIKERNEL_NEO4J_PASSWORD_CHANGE_REQUIRED", "false"))) {
                cmdArgs.add("--require-password-change");
            }
            cmdArgs.add(password);
            int rc = new CommandLine(new SetInitialPasswordCommand(new ExecutionContext(home, confDir)))
                    .execute(cmdArgs.toArray(new String[0]));
            if (rc != 0) {
                System.err.println("Launcher: setting the initial password failed (exit code " + rc + ")");
                System.exit(rc);
            }
        }

        // start(homeDir, configFile, configOverrides, expandCommands, daemonMode): console mode,
        // i.e. the user log goes to stdout as with `neo4j console` in the official image
        int rc = new CommunityBootstrapper().start(home, confFile, Map.of(), false, false);
        if (rc != 0) {
            // the bootstrapper has logged why (bad setting, port in use, ...)
            System.exit(rc);
        }
        // the DBMS runs on non-daemon threads; the bootstrapper's signal handlers stop it
    }
}
